"""RetinaFace: backbone -> FPN -> context (SSH) modules -> per-level face score, box and landmark
heads; and the LightningModule that trains it with HyperFD's search knobs."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, batched_nms, remove_small_boxes

from facenas.core.weights import WeightsMismatch, load_local_weights

from ..errors import check_finite_loss
from ..optim import build_optimizer, check_optimizer_values
from .anchors import (
    DEFAULT_SIZES,
    DEFAULT_STRIDES,
    DEFAULT_VARIANCES,
    AnchorGrid,
    anchors_per_location,
    decode_boxes,
    decode_landmarks,
)
from .backbones import create_backbone
from .loss import MultiBoxLoss
from .pretrained import load_detector_state, resolve_weights


def _conv(cin: int, cout: int, kernel: int, leaky: float | None) -> Conv2dNormActivation:
    """Conv -> BN -> LeakyReLU (no activation when ``leaky`` is None)."""
    act = partial(nn.LeakyReLU, negative_slope=leaky, inplace=True) if leaky is not None else None
    return Conv2dNormActivation(cin, cout, kernel, activation_layer=act)


class FPN(nn.Module):
    """RetinaFace's three-level feature pyramid: 1x1 laterals, nearest upsampling, 3x3 merges,
    each conv followed by BN and LeakyReLU. (torchvision's FeaturePyramidNetwork has no
    activation in its blocks, which this architecture has.)"""

    def __init__(self, in_channels: Sequence[int], out_channels: int, leaky: float) -> None:
        super().__init__()
        self.laterals = nn.ModuleList([_conv(c, out_channels, 1, leaky) for c in in_channels])
        self.merges = nn.ModuleList([_conv(out_channels, out_channels, 3, leaky) for _ in in_channels[:-1]])

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        outs = [lateral(f) for lateral, f in zip(self.laterals, feats)]
        for i in range(len(outs) - 2, -1, -1):
            up = F.interpolate(outs[i + 1], size=outs[i].shape[-2:], mode="nearest")
            outs[i] = self.merges[i](outs[i] + up)
        return outs


class SSH(nn.Module):
    """Single-stage headless context module: parallel 3x3, 5x5 (two 3x3) and 7x7 (three 3x3)
    receptive fields with 1/2, 1/4, 1/4 of the channels, concatenated, then ReLU."""

    def __init__(self, channels: int, leaky: float) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"context channels must be divisible by 4, got {channels}")
        quarter = channels // 4
        self.conv3 = _conv(channels, channels // 2, 3, None)
        self.conv5_1 = _conv(channels, quarter, 3, leaky)
        self.conv5_2 = _conv(quarter, quarter, 3, None)
        self.conv7_2 = _conv(quarter, quarter, 3, leaky)
        self.conv7_3 = _conv(quarter, quarter, 3, None)

    def forward(self, x: Tensor) -> Tensor:
        c5 = self.conv5_1(x)
        return F.relu(torch.cat([self.conv3(x), self.conv5_2(c5), self.conv7_3(self.conv7_2(c5))], dim=1))


class RetinaFaceNet(nn.Module):
    """The network: ``forward(images)`` -> score logits (B, A, 2), box offsets (B, A, 4) and
    landmark offsets (B, A, 10), anchors in :func:`make_anchors` order."""

    def __init__(
        self,
        backbone: str = "mobilenet_v2_0.5",
        pretrained: str | None = None,
        channels: int = 80,
        leaky: float = 0.1,
        anchors_per_cell: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained)
        self.fpn = FPN(self.backbone.out_channels, channels, leaky)
        levels = len(self.backbone.out_channels)
        self.context = nn.ModuleList([SSH(channels, leaky) for _ in range(levels)])
        k = anchors_per_cell
        self.score_heads = nn.ModuleList([nn.Conv2d(channels, k * 2, 1) for _ in range(levels)])
        self.box_heads = nn.ModuleList([nn.Conv2d(channels, k * 4, 1) for _ in range(levels)])
        self.landmark_heads = nn.ModuleList([nn.Conv2d(channels, k * 10, 1) for _ in range(levels)])

    @staticmethod
    def _flat(x: Tensor, n: int) -> Tensor:
        batch, channels, height, width = x.shape  # explicit sizes: a batch of 0 images has no -1 to infer
        return x.permute(0, 2, 3, 1).reshape(batch, height * width * channels // n, n)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = [ctx(f) for ctx, f in zip(self.context, self.fpn(self.backbone(images)))]
        scores = torch.cat([self._flat(h(f), 2) for h, f in zip(self.score_heads, feats)], 1)
        boxes = torch.cat([self._flat(h(f), 4) for h, f in zip(self.box_heads, feats)], 1)
        marks = torch.cat([self._flat(h(f), 10) for h, f in zip(self.landmark_heads, feats)], 1)
        return scores, boxes, marks


def postprocess(
    scores: Tensor,
    boxes: Tensor,
    landmarks: Tensor,
    anchors: Tensor,
    *,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    conf_threshold: float = 0.02,
    nms_iou: float = 0.4,
    pre_nms_top_k: int = 5000,
    keep_top_k: int = 750,
) -> list[dict[str, Tensor]]:
    """Decode a batch, threshold, NMS (``torchvision.ops.batched_nms`` over all images at once,
    the image index as the class) and keep the best ``keep_top_k`` per image.

    Returns per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "landmarks": (D, 5, 2)}`` in the
    pixels of the network input.
    """
    batch = scores.shape[0]
    prob = scores.float().softmax(-1)[..., 1]  # (B, A)
    if pre_nms_top_k and prob.shape[1] > pre_nms_top_k:
        prob, top = prob.topk(pre_nms_top_k, dim=1)
    else:
        top = torch.arange(prob.shape[1], device=prob.device).expand(batch, -1)
    image, slot = torch.nonzero(prob > conf_threshold, as_tuple=True)
    anchor = top[image, slot]
    kept_scores = prob[image, slot]
    kept_boxes = decode_boxes(boxes[image, anchor].float(), anchors[anchor], variances)
    keep = batched_nms(kept_boxes, kept_scores, image, nms_iou)  # sorted by score
    image, anchor, kept_boxes, kept_scores = image[keep], anchor[keep], kept_boxes[keep], kept_scores[keep]
    # group by image (stable: scores stay sorted) and keep each image's first keep_top_k
    order = torch.sort(image, stable=True).indices
    image, anchor, kept_boxes, kept_scores = image[order], anchor[order], kept_boxes[order], kept_scores[order]
    counts = torch.bincount(image, minlength=batch)
    rank = torch.arange(len(image), device=image.device) - (torch.cumsum(counts, 0) - counts)[image]
    within = rank < keep_top_k
    image, anchor, kept_boxes, kept_scores = image[within], anchor[within], kept_boxes[within], kept_scores[within]
    kept_marks = decode_landmarks(landmarks[image, anchor].float(), anchors[anchor], variances)
    sizes = torch.bincount(image, minlength=batch).tolist()
    return [
        {"boxes": b, "scores": s, "landmarks": m}
        for b, s, m in zip(kept_boxes.split(sizes), kept_scores.split(sizes), kept_marks.split(sizes))
    ]


def to_image_pixels(det: dict[str, Tensor], scale: float, image_size: tuple[int, int]) -> dict[str, Tensor]:
    """One image's detections (:func:`postprocess`) from network-input pixels to the pixels of
    the image it was resized from by ``scale``: boxes clipped to its ``(height, width)``, boxes
    left empty by the clipping (wholly outside the image) dropped."""
    height, width = image_size
    boxes = det["boxes"] / scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = remove_small_boxes(boxes, 1e-2)
    return {"boxes": boxes[keep], "scores": det["scores"][keep], "landmarks": det["landmarks"][keep] / scale}


class RetinaFace(pl.LightningModule):
    """RetinaFace face detector with HyperFD's search knobs as constructor arguments.

    Args:
        backbone: ``mobilenet_v2_0.5`` (HyperFD), another ``mobilenet_v2_<width>``, or a timm name.
        pretrained: local backbone weights (a state dict file of the backbone, or for
            ``mobilenet_v2_<width>`` a torchvision ``mobilenet_v2`` one, e.g. ImageNet weights);
            nothing is downloaded.
        weights: the whole detector's weights: the name of a shipped detector
            (``wider_subset_320``, see :mod:`facenas.models.detection.pretrained`) or a state-dict file
            written by its export; every tensor must fit.
        remap_from: for a ``proxyless_x05:<arch>`` backbone, a checkpoint (or exported weights,
            or a shipped detector's name) of another architecture of the NAS space, usually
            ``proxyless_x05:largest``, or of a MobileNetV2 x0.5 detector: its backbone is
            remapped onto this architecture by FNA's rules (:mod:`facenas.models.detection.remap`) and
            the rest of the detector loaded as it is.
        channels: FPN and context-module channels (80 in HyperFD).
        leaky: LeakyReLU slope in FPN and context modules.
        anchor_sizes: anchor sides per level (2 square anchors per cell at strides 8/16/32).
        strides: feature strides of the levels.
        variances: box coding variances.
        pos_iou: positive IoU threshold (HyperFD: 0.4, 0.5, 0.6); negatives below pos/2 + 0.05.
        force_iou: a face also claims its best anchor when they overlap at least this much
            (Pytorch_Retinaface: 0.2; smaller faces get no positive anchor).
        loc_weight: box-loss weight (HyperFD: 2, 4, 8).
        neg_pos_ratio: hard-negative to positive ratio (HyperFD: 2, 7).
        landmark_weight: landmark-loss weight.
        optimizer: ``sgd`` (momentum 0.9), ``adam`` or ``adamw``.
        lr: learning rate (HyperFD space: 3e-4, 1e-3, 3e-3).
        momentum, weight_decay: SGD momentum; weight decay for both optimisers (5e-4).
        lr_factor, lr_patience: ReduceLROnPlateau on ``val/ap50`` (x0.1 after 5 validations
            without improvement).
        lr_schedule: ``plateau`` (the above, HyperFD's policy) or ``cosine``: a cosine decay
            over ``trainer.max_epochs`` to ``lr * lr_factor``, stepped every epoch (a short
            fine-tune that should end at a low learning rate).
        conf_threshold, nms_iou, pre_nms_top_k, keep_top_k: inference (0.02, 0.4, 5000, 750).
        channels_last: train in channels-last memory format (faster with AMP on GPUs).

    Evaluation and early stopping are configured as callbacks
    (``configs/callbacks/detection.yaml``: ``DetectionAP`` with HyperFD's 36 px at a 720-px
    shorter side, ``EarlyStopping`` after 8 validations, ``WiderPredictionWriter``);
    ``monitor`` names the metric the best checkpoint is chosen by.
    """

    monitor = "val/ap50"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: str = "mobilenet_v2_0.5",
        pretrained: str | None = None,
        weights: str | None = None,
        remap_from: str | None = None,
        channels: int = 80,
        leaky: float = 0.1,
        anchor_sizes: Sequence[Sequence[int]] = DEFAULT_SIZES,
        strides: Sequence[int] = DEFAULT_STRIDES,
        variances: Sequence[float] = DEFAULT_VARIANCES,
        pos_iou: float = 0.5,
        force_iou: float = 0.2,
        loc_weight: float = 2.0,
        neg_pos_ratio: float = 7.0,
        landmark_weight: float = 1.0,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_factor: float = 0.1,
        lr_patience: int = 5,
        lr_schedule: Literal["plateau", "cosine"] = "plateau",
        conf_threshold: float = 0.02,
        nms_iou: float = 0.4,
        pre_nms_top_k: int = 5000,
        keep_top_k: int = 750,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {optimizer!r}")
        check_optimizer_values(lr, momentum, weight_decay)
        if lr_schedule not in ("plateau", "cosine"):
            raise ValueError(f"lr_schedule must be plateau or cosine, got {lr_schedule!r}")
        self.save_hyperparameters()
        self.net = RetinaFaceNet(backbone, pretrained, channels, leaky, anchors_per_location(anchor_sizes))
        self.criterion = MultiBoxLoss(
            pos_iou=pos_iou,
            force_iou=force_iou,
            loc_weight=loc_weight,
            neg_pos_ratio=neg_pos_ratio,
            landmark_weight=landmark_weight,
            variances=variances,
        )
        if weights is not None and remap_from is not None:
            raise ValueError("give the detector's weights or remap_from, not both")
        if weights is not None:
            self._load_weights(weights)
        if remap_from is not None:
            self._remap_from(remap_from)
        self._anchors: dict[tuple[int, int, str], Tensor] = {}
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ model

    def _load_weights(self, weights: str) -> None:
        """The whole detector's tensors from a shipped name or an exported file; all must fit
        (half-precision files are cast to the parameters' dtype)."""
        try:
            load_local_weights(self.net, resolve_weights(weights), strict=True)
        except WeightsMismatch as exc:
            raise ValueError(
                f"weights {weights!r} do not fit this detector ({exc}): set backbone, channels and anchors as it "
                "was trained"
            ) from None

    def _remap_from(self, path: str) -> None:
        """The detector of another NAS-space architecture, its backbone remapped onto ours."""
        from .proxyless import ProxylessArch, ProxylessBackbone
        from .remap import remap, remap_mobilenet_v2

        if not isinstance(self.net.backbone, ProxylessBackbone):
            raise ValueError(f"remap_from needs a proxyless_x05:<arch> backbone, not {self.hparams.backbone!r}")
        state, _ = load_detector_state(resolve_weights(path))
        if any(k.startswith("backbone.stem.") for k in state):
            mapped = remap(state, ProxylessArch.from_state_dict(state, "backbone."), self.net.backbone.arch)
        else:  # a MobileNetV2 detector (the shipped one): the layers where it coincides with the space
            try:
                mapped = remap_mobilenet_v2(state, self.net.backbone.arch)
            except ValueError as exc:
                raise ValueError(f"remap_from {path}: {exc} (neither a NAS-space nor a MobileNetV2 detector)") from None
        try:
            self.net.load_state_dict(mapped)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ValueError(
                f"remap_from {path}: its detector does not fit this one outside the backbone (set channels and "
                f"anchors as it was trained): {first[1].strip() if len(first) > 1 else first[0]}"
            ) from None

    def anchor_grid(self, height: int, width: int) -> AnchorGrid:
        """The anchor layout of an input of this size."""
        h = self.hparams
        return AnchorGrid(height, width, tuple(h.strides), tuple(tuple(s) for s in h.anchor_sizes))

    def anchors(self, height: int, width: int) -> Tensor:
        """Anchors for an input of this size (cached per size and device)."""
        key = (height, width, str(self.device))
        if key not in self._anchors:
            self._anchors[key] = self.anchor_grid(height, width).anchors(self.device)
        return self._anchors[key]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Detections per image in input pixels (see :func:`postprocess`)."""
        scores, boxes, marks = self(images)
        h = self.hparams
        return postprocess(
            scores,
            boxes,
            marks,
            self.anchors(*images.shape[-2:]),
            variances=h.variances,
            conf_threshold=h.conf_threshold,
            nms_iou=h.nms_iou,
            pre_nms_top_k=h.pre_nms_top_k,
            keep_top_k=h.keep_top_k,
        )

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images = batch["images"]
        if images.shape[0] == 0:  # every image of the batch was unreadable (each one warned): skip the step
            return None
        scores, boxes, marks = self(images)
        size = images.shape[-2:]
        losses = self.criterion(scores, boxes, marks, self.anchors(*size), batch["targets"], self.anchor_grid(*size))
        if not torch.isfinite(losses["loss"]):
            check_finite_loss(
                self,
                losses["loss"],
                batch_idx,
                f" (box {losses['loc'].item():.4g}, score {losses['conf'].item():.4g}, "
                f"landmarks {losses['landmarks'].item():.4g})",
            )
        n = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log_dict(
            {
                "train/loss_box": losses["loc"],
                "train/loss_score": losses["conf"],
                "train/loss_landmarks": losses["landmarks"],
                "train/positives": losses["num_pos"].float() / n,
            },
            batch_size=n,
        )
        return losses["loss"]

    def _evaluate(self, batch: dict[str, Any]) -> dict[str, Any]:
        # a batch whose images were all unreadable (each one warned) is empty: nothing to detect
        dets = self.detect(batch["images"]) if len(batch["meta"]) else []
        preds = [to_image_pixels(det, meta["scale"], meta["image_size"]) for det, meta in zip(dets, batch["meta"])]
        return {"preds": preds, "targets": batch["meta"]}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out = self._evaluate(batch)
        return {"names": [m["name"] for m in batch["meta"]], "preds": out["preds"]}

    # ------------------------------------------------------------------ training policy

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        opt = build_optimizer(h.optimizer, self.parameters(), h.lr, h.momentum, h.weight_decay)
        if h.get("lr_schedule", "plateau") == "cosine":
            epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=h.lr * h.lr_factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "epoch"}}
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=h.lr_factor, patience=h.lr_patience
        )
        every = (self.trainer.check_val_every_n_epoch or 1) if self._trainer is not None else 1
        # stepped only on epochs that validate, so patience counts validations
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": plateau,
                "monitor": "val/ap50",
                "interval": "epoch",
                "frequency": every,
                "strict": False,
            },
        }
