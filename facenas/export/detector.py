"""RetinaFace to ONNX and TorchScript, and an ONNX Runtime session that runs the ONNX file.

Two graphs:

- **raw** (default): ``images`` (B, 3, H, W) float32, ImageNet-normalised RGB -> ``scores``
  (B, A, 2) logits, ``boxes`` (B, A, 4) and ``landmarks`` (B, A, 10) offsets, exactly
  :class:`~facenas.models.detection.RetinaFaceNet`'s outputs. Anchors and post-processing are the
  caller's (:class:`OnnxDetectorSession` does both from the file's metadata).
- **post-processed** (``postprocess=True``): the same input -> ``image`` (D,) int64, ``boxes``
  (D, 4) xyxy, ``scores`` (D,), ``landmarks`` (D, 5, 2) in input pixels, grouped by image and by
  descending score: the anchors (built from the input size in the graph), softmax, the
  ``pre_nms_top_k`` best scores, decoding and NMS, the same steps and thresholds as
  :meth:`RetinaFace.detect <facenas.models.detection.RetinaFace.detect>`.

With ``pixels=True`` either graph takes ``pixels`` (B, H, W, 3) uint8 RGB instead, the decoded
image as it is, and normalises it itself with the same operations as the data modules' ``normalize``
(the result is bit for bit the same); ONNX Runtime does this faster than PyTorch does outside it.

Batch size, height and width are dynamic in both. NMS in ONNX is the standard
``NonMaxSuppression`` operator given the boxes as (B, K, 4) and the scores as (B, 1, K): it keeps
each image's boxes apart by itself, so neither a Python loop over images (which a trace would
freeze at the example's batch size) nor torchvision's coordinate-offset trick (which shifts the
boxes of later images by thousands of pixels before the IoU is computed) is needed. Its
``score_threshold`` and ``max_output_boxes_per_class`` are ``conf_threshold`` and ``keep_top_k``.

The ONNX graphs are written by PyTorch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``): it maps a custom ``autograd.Function`` onto an ONNX operator (the batched NMS
above) and keeps every size symbolic, and it exports this network in seconds where the
``torch.export``-based exporter takes about half a minute. The TorchScript file traces the
network (a trace works for any backbone, timm's included, where scripting would need each to be
scriptable; the network has no data-dependent control flow, and its sizes are recorded as
operations, so the trace runs at any input size) and scripts the post-processing, which has
data-dependent shapes and a loop over the images.

The hyper-parameters needed to rebuild anchors and post-process (and the input normalisation)
travel inside the file: ONNX ``metadata_props`` key :data:`HPARAMS_KEY` (JSON), TorchScript extra
file ``facenas.json``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min
from torchvision.ops import nms

from facenas.datamodules.detection.transforms import MEAN, STD
from facenas.models.detection.anchors import decode_boxes, decode_landmarks
from facenas.models.detection.retinaface import RetinaFace, postprocess

#: the ONNX metadata key (and TorchScript extra file stem) holding :func:`detector_hparams` as JSON
HPARAMS_KEY = "facenas"
FORMAT_VERSION = 1
RAW_OUTPUTS = ("scores", "boxes", "landmarks")
POST_OUTPUTS = ("image", "boxes", "scores", "landmarks")


def detector_hparams(model: RetinaFace, postprocess: bool = False, pixels: bool = False) -> dict[str, Any]:
    """What a runtime needs besides the graph: the anchor layout (``strides``, ``anchor_sizes``:
    the arguments of :class:`~facenas.models.detection.anchors.AnchorGrid`), the box coding
    ``variances``, the post-processing thresholds, and the input (``input``: ``images``, NCHW
    float32 ``(pixels / 255 - mean) / std`` with ``mean`` and ``std`` of 0..1 RGB, or ``pixels``,
    NHWC uint8 RGB normalised in the graph)."""
    h = model.hparams
    return {
        "facenas_export": FORMAT_VERSION,
        "task": "detection",
        "graph": "postprocessed" if postprocess else "raw",
        "input": "pixels" if pixels else "images",
        "outputs": list(POST_OUTPUTS if postprocess else RAW_OUTPUTS),
        "backbone": str(h.backbone),
        "channels": int(h.channels),
        "strides": [int(s) for s in h.strides],
        "anchor_sizes": [[int(s) for s in level] for level in h.anchor_sizes],
        "variances": [float(v) for v in h.variances],
        "conf_threshold": float(h.conf_threshold),
        "nms_iou": float(h.nms_iou),
        "pre_nms_top_k": int(h.pre_nms_top_k or 0),
        "keep_top_k": int(h.keep_top_k),
        "mean": [round(float(v), 6) for v in MEAN.flatten()],
        "std": [round(float(v), 6) for v in STD.flatten()],
        "color": "RGB",
        "layout": "NHWC" if pixels else "NCHW",
    }


# ---------------------------------------------------------------------------------------- graph


def _anchors(height: Any, width: Any, strides: Sequence[int], sizes: Sequence[Sequence[int]]) -> Tensor:
    """:func:`~facenas.models.detection.anchors.make_anchors` written with tensor operations only, so
    that a trace keeps ``height`` and ``width`` (traced sizes) symbolic. (A, 4) ``cx, cy, w, h``."""
    levels = []
    for stride, level_sizes in zip(strides, sizes):
        rows = torch.div(height + (stride - 1), stride, rounding_mode="floor")
        cols = torch.div(width + (stride - 1), stride, rounding_mode="floor")
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * stride
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * stride
        k = len(level_sizes)
        side = torch.tensor([float(s) for s in level_sizes])
        grid_y = cy[:, None, None].expand(-1, cx.shape[0], k)  # (rows, cols, k)
        grid_x = cx[None, :, None].expand(cy.shape[0], -1, k)
        wh = side[None, None, :].expand(cy.shape[0], cx.shape[0], k)
        levels.append(torch.stack([grid_x, grid_y, wh, wh], -1).reshape(-1, 4))
    return torch.cat(levels)


class _BatchedNMS(torch.autograd.Function):
    """Per-image NMS of (B, K, 4) boxes and (B, K) scores (above ``score_threshold``, at most
    ``max_out`` per image) -> (N, 3) int64 rows ``image, 0, slot``, grouped by image, best first.

    Eager, it is torchvision's ``nms`` image by image; exported, it is ONNX ``NonMaxSuppression``
    (same layout of output), which does the per-image batching itself."""

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, iou: float, score_threshold: float, max_out: int) -> Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            slot = torch.nonzero(scores[b] > score_threshold).reshape(-1)
            keep = slot[nms(boxes[b, slot], scores[b, slot], iou)][:max_out]
            rows.append(torch.stack([torch.full_like(keep, b), torch.zeros_like(keep), keep], 1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, iou: float, score_threshold: float, max_out: int) -> Any:
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1], dtype=torch.long)))
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


class _Raw(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net(images)


class _FromPixels(nn.Module):
    """(B, H, W, 3) uint8 RGB -> the wrapped module on the normalised (B, 3, H, W) float32 images:
    :func:`~facenas.datamodules.detection.transforms.normalize`'s operations, in its order."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", MEAN.clone()[None])
        self.register_buffer("std", STD.clone()[None])

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        return self.inner((pixels.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std)


class _OnnxPostprocessed(nn.Module):
    """Network + anchors + decode + batched NMS, written for a trace (no loop over images)."""

    def __init__(self, net: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.h = hparams

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h = self.h
        scores, boxes, marks = self.net(images)
        anchors = _anchors(images.shape[2], images.shape[3], h["strides"], h["anchor_sizes"])
        prob = scores.softmax(-1)[..., 1]  # (B, A)
        # pre_nms_top_k 0 (or None): every anchor, as postprocess()
        prob, top = prob.topk(_topk_min(prob, h["pre_nms_top_k"] or 2**62, 1), dim=1)  # (B, K), sorted
        batch, k = top.shape[0], top.shape[1]
        flat_top = (top + torch.arange(batch)[:, None] * boxes.shape[1]).reshape(-1)  # into (B * A)
        top_boxes = decode_boxes(
            boxes.reshape(-1, 4).index_select(0, flat_top), anchors.index_select(0, top.reshape(-1)), h["variances"]
        ).reshape(batch, k, 4)
        selected = _BatchedNMS.apply(top_boxes, prob, h["nms_iou"], h["conf_threshold"], h["keep_top_k"])
        image, slot = selected[:, 0], selected[:, 2]
        pick = image * k + slot  # into (B * K)
        anchor = top.reshape(-1).index_select(0, pick)
        out_marks = decode_landmarks(
            marks.reshape(-1, 10).index_select(0, image * marks.shape[1] + anchor),
            anchors.index_select(0, anchor),
            h["variances"],
        )
        return image, top_boxes.reshape(-1, 4).index_select(0, pick), prob.reshape(-1).index_select(0, pick), out_marks


class _ScriptedPostprocess(nn.Module):
    """The post-processing of the TorchScript file, scripted: the same steps as
    :class:`_OnnxPostprocessed` with torchvision's ``nms`` image by image."""

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.strides: list[int] = list(hparams["strides"])
        self.sizes: list[list[float]] = [[float(s) for s in level] for level in hparams["anchor_sizes"]]
        self.variances: list[float] = list(hparams["variances"])
        self.conf_threshold: float = hparams["conf_threshold"]
        self.nms_iou: float = hparams["nms_iou"]
        self.pre_nms_top_k: int = hparams["pre_nms_top_k"] or 0
        self.keep_top_k: int = hparams["keep_top_k"]

    def anchors(self, height: int, width: int) -> Tensor:
        levels: list[Tensor] = []
        for stride, level_sizes in zip(self.strides, self.sizes):
            rows = (height + stride - 1) // stride
            cols = (width + stride - 1) // stride
            cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * stride
            cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * stride
            k = len(level_sizes)
            side = torch.tensor(level_sizes, dtype=torch.float32)
            grid_y = cy[:, None, None].expand(rows, cols, k)
            grid_x = cx[None, :, None].expand(rows, cols, k)
            wh = side[None, None, :].expand(rows, cols, k)
            levels.append(torch.stack([grid_x, grid_y, wh, wh], -1).reshape(-1, 4))
        return torch.cat(levels)

    def forward(
        self, scores: Tensor, boxes: Tensor, marks: Tensor, height: int, width: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        anchors = self.anchors(height, width).to(boxes.device)
        prob = scores.float().softmax(-1)[:, :, 1]
        k = min(self.pre_nms_top_k, prob.shape[1]) if self.pre_nms_top_k > 0 else prob.shape[1]
        prob, top = prob.topk(k, dim=1)
        v0, v1 = self.variances[0], self.variances[1]
        images: list[Tensor] = []
        out_boxes: list[Tensor] = []
        out_scores: list[Tensor] = []
        out_marks: list[Tensor] = []
        for b in range(prob.shape[0]):
            slot = torch.nonzero(prob[b] > self.conf_threshold).reshape(-1)
            anchor = top[b].index_select(0, slot)
            a = anchors.index_select(0, anchor)
            off = boxes[b].index_select(0, anchor).float()
            centre = a[:, :2] + off[:, :2] * v0 * a[:, 2:]
            wh = a[:, 2:] * torch.exp(off[:, 2:] * v1)
            decoded = torch.cat([centre - wh / 2, centre + wh / 2], -1)
            score = prob[b].index_select(0, slot)
            keep = nms(decoded, score, self.nms_iou)[: self.keep_top_k]
            anchor, a = anchor.index_select(0, keep), a.index_select(0, keep)
            rel = marks[b].index_select(0, anchor).float().reshape(-1, 5, 2)
            out_marks.append(a[:, None, :2] + rel * v0 * a[:, None, 2:])
            out_boxes.append(decoded.index_select(0, keep))
            out_scores.append(score.index_select(0, keep))
            images.append(torch.full_like(keep, b))
        if len(images) == 0:
            return (
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, 4),
                torch.zeros(0),
                torch.zeros(0, 5, 2),
            )
        return torch.cat(images), torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_marks)


class _TorchScriptPostprocessed(nn.Module):
    """The module of a post-processed TorchScript file: the traced network, then the scripted
    post-processing (the ONNX graph's outputs, in the same order)."""

    def __init__(self, net: nn.Module, post: nn.Module, pixels: bool = False) -> None:
        super().__init__()
        self.net = net
        self.post = post
        self.pixels = pixels
        self.register_buffer("mean", MEAN.clone()[None])
        self.register_buffer("std", STD.clone()[None])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.pixels:  # as _FromPixels (a scripted module cannot wrap one of variadic outputs)
            images = (images.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
        scores, boxes, marks = self.net(images)
        return self.post(scores, boxes, marks, images.shape[2], images.shape[3])


# ---------------------------------------------------------------------------------------- export


def _example(model: RetinaFace) -> Tensor:
    # two images of a size that is no multiple of the largest stride, so that nothing in the
    # trace can silently rely on a batch of one or a round size
    return torch.randn(2, 3, 200, 232, device=model.device)


def export_detector(
    model: RetinaFace,
    path: str | Path,
    *,
    format: Literal["onnx", "torchscript"] = "onnx",
    postprocess: bool = False,
    pixels: bool = False,
    opset: int = 17,
) -> Path:
    """Write ``model`` (its network, in evaluation mode, on the CPU) as an ONNX or TorchScript file
    with dynamic batch, height and width; with ``postprocess`` the graph ends in decode + NMS, with
    ``pixels`` it takes uint8 (B, H, W, 3) RGB and normalises it itself (see the module docstring
    for the graphs' inputs and outputs). Returns the path written."""
    if format not in ("onnx", "torchscript"):
        raise ValueError(f"format must be onnx or torchscript, got {format!r}")
    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    path = Path(path)
    hparams = detector_hparams(model, postprocess, pixels)
    net = _cpu_copy(model.net)
    example = _example(model).cpu()
    if pixels:
        example = (torch.rand(example.shape, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        example = example.permute(0, 2, 3, 1).contiguous()
    input_name = "pixels" if pixels else "images"
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # PyTorch announces TorchScript's deprecation on every call (ONNX is the export to prefer),
            # and the trace notes the sizes it records as operations
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            if postprocess:
                traced = torch.jit.trace(net, _example(model).cpu())
                module = torch.jit.script(_TorchScriptPostprocessed(traced, _ScriptedPostprocess(hparams), pixels))
            else:
                module = torch.jit.trace(_FromPixels(net) if pixels else net, example)
            torch.jit.save(module, str(path), _extra_files={f"{HPARAMS_KEY}.json": json.dumps(hparams)})
        return path
    import onnx

    wrapper = _OnnxPostprocessed(net, hparams) if postprocess else _Raw(net)
    if pixels:
        wrapper = _FromPixels(wrapper)
    outputs = POST_OUTPUTS if postprocess else RAW_OUTPUTS
    detections = {"image": {0: "detections"}, "boxes": {0: "detections"}, "scores": {0: "detections"}}
    detections["landmarks"] = {0: "detections"}
    anchors = {name: {0: "batch", 1: "anchors"} for name in RAW_OUTPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter announces its deprecation, and the trace notes the sizes it records
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=list(outputs),
            dynamic_axes={
                input_name: {0: "batch", 1: "height", 2: "width"} if pixels else {0: "batch", 2: "height", 3: "width"},
                **(detections if postprocess else anchors),
            },
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = HPARAMS_KEY, json.dumps(hparams)
    proto.producer_name = "facenas"
    onnx.save(proto, str(path))
    return path


def _cpu_copy(net: nn.Module) -> nn.Module:
    import copy

    net = copy.deepcopy(net).cpu().float().eval().requires_grad_(False)  # outputs need no autograd graph
    return net.to(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------- runtime


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript file written by :func:`export_detector` (on the CPU) and its hyper-parameters."""
    extra = {f"{HPARAMS_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[f"{HPARAMS_KEY}.json"]:
        raise ValueError(f"{path}: not a facenas TorchScript export (no {HPARAMS_KEY}.json inside)")
    return module.eval(), json.loads(extra[f"{HPARAMS_KEY}.json"])


def ort_session(path: Path, threads: int | None, what: str) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (None: its
    default, one per core); a missing file is a FileNotFoundError naming ``what``, a file ONNX
    Runtime cannot load a ValueError naming the file."""
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(2, f"{what} not found", str(path))
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own error types: any failure to load means "not a model"
        raise ValueError(f"{path}: not an ONNX model ONNX Runtime can load ({exc})") from None


class OnnxDetectorSession:
    """An exported RetinaFace ONNX file in ONNX Runtime (CPU).

    ``sess(images)`` runs the graph on (B, 3, H, W) float32 normalised images (see
    :attr:`hparams`'s ``mean``/``std``), or for an export with ``pixels`` (``hparams["input"] ==
    "pixels"``, :attr:`takes_pixels`) on (B, H, W, 3) uint8 RGB, and returns its outputs as NumPy
    arrays: for a raw graph ``(scores, boxes, landmarks)`` shaped like :class:`RetinaFaceNet`'s;
    for a post-processed one ``(image, boxes, scores, landmarks)``. :meth:`detect` gives per-image
    detections from either.

    Args:
        path: the ``.onnx`` file written by :func:`export_detector`.
        threads: ONNX Runtime's intra-op threads (None: its default, one per core).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = ort_session(self.path, threads, "ONNX detector")
        meta = self.session.get_modelmeta().custom_metadata_map
        if HPARAMS_KEY not in meta:
            raise ValueError(f"{self.path}: not a facenas detector export (no {HPARAMS_KEY!r} metadata)")
        self.hparams: dict[str, Any] = json.loads(meta[HPARAMS_KEY])
        if self.hparams.get("task") != "detection":
            raise ValueError(f"{self.path}: a facenas {self.hparams.get('task')} export, not a detector")
        self.postprocessed = self.hparams["graph"] == "postprocessed"
        self.takes_pixels = self.hparams.get("input") == "pixels"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.takes_pixels:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(
                    f"{self.path.name} takes pixels: (B, H, W, 3) uint8 RGB, got {images.dtype} {images.shape}"
                )
            images = np.ascontiguousarray(images)
        else:
            images = np.ascontiguousarray(images, dtype=np.float32)
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be (B, 3, H, W) normalised float32, got shape {images.shape}")
        return tuple(self.session.run(self.output_names, {self.input_name: images}))

    def detect(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "landmarks": (D, 5, 2)}`` in input
        pixels, after the file's thresholds and NMS (in the graph, or here with
        :func:`~facenas.models.detection.postprocess` for a raw graph)."""
        outputs = self(images)
        batch = images.shape[0]
        if self.postprocessed:
            image, boxes, scores, marks = outputs
            return [
                {"boxes": boxes[image == b], "scores": scores[image == b], "landmarks": marks[image == b]}
                for b in range(batch)
            ]
        from facenas.models.detection.anchors import AnchorGrid, grid_anchors

        h = self.hparams
        height, width = images.shape[1:3] if self.takes_pixels else images.shape[2:4]
        grid = AnchorGrid(height, width, tuple(h["strides"]), tuple(tuple(s) for s in h["anchor_sizes"]))
        dets = postprocess(
            *(torch.from_numpy(o) for o in outputs),
            grid_anchors(grid),
            variances=h["variances"],
            conf_threshold=h["conf_threshold"],
            nms_iou=h["nms_iou"],
            pre_nms_top_k=h["pre_nms_top_k"],
            keep_top_k=h["keep_top_k"],
        )
        return [{k: v.numpy() for k, v in d.items()} for d in dets]
