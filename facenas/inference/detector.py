"""FaceDetector: a trained RetinaFace (shipped, a checkpoint, exported weights or an ONNX export)
on your own images, from Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facenas.datamodules.detection.datamodule import collate_eval
from facenas.datamodules.detection.formats import face_records
from facenas.datamodules.detection.transforms import MEAN, STD, EvalTransform
from facenas.models.detection import RetinaFace, postprocess, to_image_pixels
from facenas.models.detection.anchors import AnchorGrid, grid_anchors
from facenas.models.detection.pretrained import SHIPPED, SHIPPED_ARCHITECTURES

from .images import is_single, rgb_array

_STRIDE = 32  # the evaluation collate pads to a multiple of the coarsest feature stride


@dataclass
class Detections:
    """The faces found in one image, in its pixels, best first.

    Attributes:
        boxes: (N, 4) float32 ``x1, y1, x2, y2``, clipped to the image.
        scores: (N,) float32 face probabilities, all at least the detector's threshold.
        landmarks: (N, 5, 2) float32 ``x, y`` of the left eye, right eye, nose, left and right
            mouth corners (left and right as seen in the image).
        image_size: ``(height, width)`` of the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per face, as ``facenas predict`` writes them to ``detections.jsonl``:
        ``{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}``
        (:func:`~facenas.datamodules.detection.face_records`)."""
        return face_records(self.boxes, self.scores, self.landmarks)


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FaceDetector:
    """A face detector for your own images: ``FaceDetector.from_pretrained("wider_subset_320")``,
    ``.from_checkpoint(path)`` (a ``facenas fit`` checkpoint) or ``.from_onnx(path)`` (a
    ``facenas export`` file), then ``detect(image)``.

    It resizes each image as :class:`~facenas.datamodules.detection.FaceDetectionDataModule`
    does for evaluation and ``facenas predict``
    (:class:`~facenas.datamodules.detection.transforms.EvalTransform`: the shorter side to
    ``short_side``, the longer at most ``max_side``; padded bottom and right to a multiple of
    32), normalises it with ImageNet's mean and deviation, batches images of the same padded
    size together (so no image is padded for another's sake; float rounding still differs
    between batch sizes), runs the network on ``device`` and maps the detections back to the
    image's pixels (:func:`~facenas.models.detection.to_image_pixels`). Detections are decoded and
    NMS'd as :meth:`RetinaFace.detect <facenas.models.detection.RetinaFace.detect>` does (IoU
    0.4 for the shipped detector), then those scoring at least ``threshold`` are kept.

    Args:
        model: a :class:`~facenas.models.detection.RetinaFace` (or None with ``session``).
        session: an :class:`~facenas.export.OnnxDetectorSession` instead of a model.
        threshold: the lowest score kept (0.5).
        short_side, max_side: the resize (720 and 1280, as ``configs/detection/pretrained.yaml``).
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``, ...; default CUDA when there is one (an ONNX session runs on
            the CPU).
    """

    def __init__(
        self,
        model: RetinaFace | None = None,
        *,
        session: Any = None,
        threshold: float = 0.5,
        short_side: int = 720,
        max_side: int = 1280,
        batch_size: int = 8,
        device: str | torch.device | None = None,
    ) -> None:
        if (model is None) == (session is None):
            raise ValueError("give a RetinaFace model or an ONNX session, exactly one")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.threshold = float(threshold)
        self.transform = EvalTransform(short_side, max_side)
        self.batch_size = int(batch_size)
        self.session = session
        if session is not None:
            self.device = torch.device("cpu")
            self.settings = _settings(session.hparams)
            self._check_normalisation(session.hparams)
            self.model = None
        else:
            self.device = _pick_device(device)
            self.model = model.to(self.device).eval()
            self.settings = _settings(model.hparams)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, name: str = "wider_subset_320", **kwargs: Any) -> FaceDetector:
        """A detector shipped with facenas (``wider_subset_320``, ``largest_wider_subset_320``),
        or a path: ``.onnx`` (:meth:`from_onnx`), ``.ckpt`` (:meth:`from_checkpoint`), or a
        weights file written by ``python -m facenas.models.detection.pretrained`` (the default
        architecture, MobileNetV2 x0.5 with 80 channels). ``kwargs`` go to the constructor."""
        if name in SHIPPED:
            return cls(RetinaFace(weights=name, **SHIPPED_ARCHITECTURES.get(name, {})), **kwargs)
        suffix = Path(name).suffix.lower()
        if suffix == ".onnx":
            return cls.from_onnx(name, **kwargs)
        if suffix == ".ckpt":
            return cls.from_checkpoint(name, **kwargs)
        return cls(RetinaFace(weights=name), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> FaceDetector:
        """The detector of a ``facenas fit`` checkpoint, built with its own hyper-parameters
        (its backbone's or detector's initial weights are not read again: the checkpoint has
        them); the resize comes from the data module saved in it unless given."""
        path = Path(path)
        checkpoint, hparams = read_checkpoint(path, "anchor_sizes", "a RetinaFace checkpoint (no detector")
        model = RetinaFace(
            **{**_arguments(RetinaFace, hparams), "weights": None, "pretrained": None, "remap_from": None}
        )
        model.load_state_dict(checkpoint["state_dict"])
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        for key, arg in (("eval_short_side", "short_side"), ("eval_max_side", "max_side")):
            if key in data:
                kwargs.setdefault(arg, int(data[key]))
        return cls(model, **kwargs)

    @classmethod
    def from_onnx(cls, path: str | Path, *, threads: int | None = None, **kwargs: Any) -> FaceDetector:
        """An exported detector (``facenas export``) run by ONNX Runtime on the CPU with
        ``threads`` threads (None: one per core); post-processed as the PyTorch detector is
        (or by the graph itself, for an export with post-processing)."""
        from facenas.export import OnnxDetectorSession

        session = OnnxDetectorSession(path, threads=threads)
        if session.takes_pixels:
            # the detector resizes and pads normalised images (padding = the mean colour); a graph
            # that normalises pixels itself would see other values in the padding
            raise ValueError(
                f"{path} was exported with --pixels (it takes uint8 pixels and normalises them itself): "
                "FaceDetector runs exports without --pixels; run this one with OnnxDetectorSession(path).detect"
            )
        return cls(session=session, **kwargs)

    @staticmethod
    def _check_normalisation(hparams: dict[str, Any]) -> None:
        mean, std = hparams.get("mean"), hparams.get("std")
        if mean is None or std is None:
            return
        if not (
            np.allclose(mean, MEAN.flatten().numpy(), atol=1e-5) and np.allclose(std, STD.flatten().numpy(), atol=1e-5)
        ):
            raise ValueError(f"the export normalises its input with mean {mean} and std {std}, not ImageNet's")

    # ------------------------------------------------------------------ detection

    def detect(self, images: Any, *, bgr: bool = False) -> Detections | list[Detections]:
        """The faces of one image (a :class:`Detections`) or of a list of images (a list).

        An image is a path, a PIL image, or an HxWx3 uint8 array in RGB order (``bgr=True``
        for BGR arrays, as OpenCV reads them); see :func:`facenas.inference.images.rgb_array`.
        """
        single = is_single(images)
        batch = [images] if single else list(images)
        pixels = [
            torch.from_numpy(rgb_array(image, bgr=bgr, index=None if single else i)) for i, image in enumerate(batch)
        ]
        results = self.detect_tensors([p.permute(2, 0, 1) for p in pixels])
        return results[0] if single else results

    @torch.inference_mode()
    def detect_tensors(self, images: Sequence[Tensor]) -> list[Detections]:
        """:meth:`detect` on uint8 RGB (3, H, W) tensors."""
        items = []
        for k, image in enumerate(images):
            height, width = image.shape[-2:]
            resized, scale = self.transform(image)
            items.append(
                {"image": resized, "meta": {"index": k, "scale": scale, "image_size": (int(height), int(width))}}
            )
        # same padded size, same batch: no image is padded for another one's sake
        groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for item in items:
            h, w = item["image"].shape[-2:]
            groups.setdefault((-(-h // _STRIDE), -(-w // _STRIDE)), []).append(item)
        out: list[Detections | None] = [None] * len(items)
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                batch = collate_eval(group[start : start + self.batch_size])
                for det, meta in zip(self._run(batch["images"]), batch["meta"]):
                    det = to_image_pixels(det, meta["scale"], meta["image_size"])
                    sure = det["scores"] >= self.threshold
                    out[meta["index"]] = Detections(
                        det["boxes"][sure].float().cpu().numpy(),
                        det["scores"][sure].float().cpu().numpy(),
                        det["landmarks"][sure].float().cpu().numpy(),
                        meta["image_size"],
                    )
        return out  # type: ignore[return-value]

    def _run(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Detections in network-input pixels (every candidate above the model's own
        ``conf_threshold``), as :meth:`RetinaFace.detect` gives them."""
        height, width = images.shape[-2:]
        if self.session is not None:
            if self.session.postprocessed:
                return [{k: torch.from_numpy(v) for k, v in d.items()} for d in self.session.detect(images.numpy())]
            raw = tuple(torch.from_numpy(o) for o in self.session(images.numpy()))
            s = self.settings
            anchors = grid_anchors(AnchorGrid(height, width, s["strides"], s["anchor_sizes"]))
        else:
            raw = self.model(images.to(self.device))
            anchors = self.model.anchors(height, width)
        s = self.settings
        return postprocess(
            *raw,
            anchors,
            variances=s["variances"],
            conf_threshold=s["conf_threshold"],
            nms_iou=s["nms_iou"],
            pre_nms_top_k=s["pre_nms_top_k"],
            keep_top_k=s["keep_top_k"],
        )


def read_checkpoint(path: Path, key: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``facenas fit`` checkpoint and its hyper-parameters, which must hold ``key``: a missing
    file is a FileNotFoundError, anything else one ValueError naming the file (``not {kind}
    hyper-parameters in it)``)."""
    if not path.is_file():
        raise FileNotFoundError(2, "checkpoint not found", str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # zipfile, pickle and torch each have their own error for a bad file
        raise ValueError(f"{path}: not a checkpoint ({str(exc).splitlines()[0][:200]})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or key not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not {kind} hyper-parameters in it)")
    return checkpoint, hparams


def _arguments(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The saved hyper-parameters that ``cls``'s constructor takes (LightningCLI adds its own
    keys, ``_class_path`` and ``_instantiator``, to a checkpoint's)."""
    import inspect

    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in names}


def _settings(hparams: Any) -> dict[str, Any]:
    """The anchor layout and post-processing settings of a model's (or an export's) hyper-parameters."""
    get = hparams.get
    return {
        "strides": tuple(int(s) for s in get("strides")),
        "anchor_sizes": tuple(tuple(int(v) for v in level) for level in get("anchor_sizes")),
        "variances": tuple(float(v) for v in get("variances")),
        "conf_threshold": float(get("conf_threshold")),
        "nms_iou": float(get("nms_iou")),
        "pre_nms_top_k": int(get("pre_nms_top_k")),
        "keep_top_k": int(get("keep_top_k")),
    }
