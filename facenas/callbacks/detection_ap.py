"""Face-detection AP@50 with MMDetection's VOC semantics: the functional core (pure torch).

The torchmetrics wrapper is :class:`facenas.callbacks.metrics.DetectionAveragePrecision`.

Semantics (per image, then pooled over all images):

* A ground truth is ignored when flagged (WIDER invalid, VOC difficult, COCO crowd) or when
  ``sqrt(w * h) * scale < min_size``; ``scale`` maps the image to a shorter side of ``short_side``
  pixels when given (HyperFD measures sizes at short side 720), else 1.
* Detections are taken in descending score order and each one is matched to its argmax-IoU
  ground truth (ignored ones included): IoU >= threshold and that box ignored -> neither TP nor
  FP; not yet matched -> TP; already matched -> FP. A detection whose best IoU is below the
  threshold is FP, unless its own scaled ``sqrt(w * h)`` is below ``min_size`` (then ignored).
* A detection that is not a box (a NaN or infinite coordinate or score, zero or negative width
  or height) is never scored, in training as from files (where the reader also reports it).
* AP is the area under the interpolated precision envelope (VOC all-point) of all counted
  detections sorted by score; recall is divided by the number of non-ignored ground truths.

The matching is vectorised over all images at once: since every detection's target is its fixed
argmax, "already matched" only means "an earlier detection of the same image has the same
target", which a scatter-min over ranks answers without a loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from facenas.core.boxes import box_sizes, paired_iou
from facenas.core.errors import UserError

# pairs (detection, ground truth of its image) evaluated at once; bounds memory to ~100 MB
_PAIR_CHUNK = 4_000_000


class BadThreshold(UserError, ValueError):
    """An IoU threshold outside (0, 1]: no detection could match (above 1) or every overlap,
    however slight, would (0 or below)."""


def check_iou_threshold(iou: float) -> float:
    """``iou`` when it is in (0, 1], else :class:`BadThreshold`."""
    if not (isinstance(iou, int | float) and 0 < iou <= 1):
        raise BadThreshold(f"iou must be in (0, 1], got {iou!r}")
    return float(iou)


@dataclass
class MatchResult:
    """Counted detections of a matching: their scores (K,), TP flags (K,), and the number of
    non-ignored ground truths."""

    scores: Tensor
    tp: Tensor
    num_gt: int


def match_detections(
    det_boxes: Tensor,
    det_scores: Tensor,
    det_image: Tensor,
    gt_boxes: Tensor,
    gt_image: Tensor,
    gt_ignore: Tensor | None = None,
    *,
    image_scale: Tensor | None = None,
    iou_threshold: float = 0.5,
    min_size: float = 0.0,
) -> MatchResult:
    """Classify every detection of a set of images as TP, FP or ignored.

    Args:
        det_boxes: (D, 4) xyxy detections of all images, in any order.
        det_scores: (D,) confidences.
        det_image: (D,) int64 image index of each detection.
        gt_boxes: (G, 4) xyxy ground truths of all images.
        gt_image: (G,) int64 image index of each ground truth.
        gt_ignore: (G,) bool ignore flags (default none).
        image_scale: (I,) per-image factor applied to box sizes before the ``min_size`` test
            (``short_side / min(h, w)``), indexed by image; default 1.
        iou_threshold: minimum IoU of a match.
        min_size: ground truths (and unmatched detections) smaller than this are ignored.

    Returns:
        The scores and TP flags of the counted (non-ignored) detections and the number of
        non-ignored ground truths.
    """
    check_iou_threshold(iou_threshold)
    device = det_boxes.device
    det_boxes = det_boxes.reshape(-1, 4).double()
    gt_boxes = gt_boxes.reshape(-1, 4).to(device).double()
    det_scores = det_scores.reshape(-1).to(device)
    det_image = det_image.reshape(-1).to(device).long()
    usable = (
        torch.isfinite(det_boxes).all(dim=1)
        & torch.isfinite(det_scores)
        & (det_boxes[:, 2:] > det_boxes[:, :2]).all(dim=1)
    )
    if not bool(usable.all()):  # not boxes: never scored
        det_boxes, det_scores, det_image = det_boxes[usable], det_scores[usable], det_image[usable]
    gt_image = gt_image.reshape(-1).to(device).long()
    gt_ignore = (
        torch.zeros(len(gt_boxes), dtype=torch.bool, device=device)
        if gt_ignore is None
        else gt_ignore.reshape(-1).to(device).bool()
    )
    num_images = (
        int(max(det_image.max().item() if len(det_image) else -1, gt_image.max().item() if len(gt_image) else -1)) + 1
    )
    scale = (
        torch.ones(num_images, dtype=torch.float64, device=device)
        if image_scale is None
        else image_scale.to(device).double()
    )

    # ground truths grouped by image
    gt_order = torch.sort(gt_image, stable=True).indices
    gt_boxes, gt_image, gt_ignore = gt_boxes[gt_order], gt_image[gt_order], gt_ignore[gt_order]
    gt_ignored = gt_ignore | (box_sizes(gt_boxes) * scale[gt_image] < min_size) if min_size > 0 else gt_ignore
    gt_count = torch.bincount(gt_image, minlength=num_images)
    gt_start = torch.cumsum(gt_count, 0) - gt_count

    # detections by image, then by descending score (the order in which they claim matches)
    by_score = torch.sort(det_scores, descending=True, stable=True).indices
    order = by_score[torch.sort(det_image[by_score], stable=True).indices]
    det_boxes, det_scores, det_image = det_boxes[order], det_scores[order], det_image[order]
    num_det = len(det_boxes)

    best_iou = torch.full((num_det,), -1.0, dtype=torch.float64, device=device)
    best_gt = torch.full((num_det,), -1, dtype=torch.long, device=device)
    pairs_per_det = gt_count[det_image] if num_det else torch.zeros(0, dtype=torch.long, device=device)
    pair_end = torch.cumsum(pairs_per_det, 0)
    start = 0
    while start < num_det:
        # the largest run of detections whose pairs fit the chunk (always at least one)
        offset = int(pair_end[start - 1].item()) if start else 0
        limit = torch.tensor([offset + _PAIR_CHUNK], dtype=pair_end.dtype, device=device)
        stop = int(torch.searchsorted(pair_end, limit, right=True).item())
        stop = min(max(stop, start + 1), num_det)
        counts = pairs_per_det[start:stop]
        total = int(counts.sum().item())
        if total:
            local = torch.repeat_interleave(torch.arange(start, stop, device=device), counts)
            first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            gt_idx = gt_start[det_image[local]] + torch.arange(total, device=device) - first
            iou = paired_iou(det_boxes[local], gt_boxes[gt_idx])
            best_iou.scatter_reduce_(0, local, iou, reduce="amax", include_self=True)
            # argmax: the first ground truth (file order) reaching the maximum
            at_max = iou == best_iou[local]
            best_gt.scatter_reduce_(0, local[at_max], gt_idx[at_max], reduce="amin", include_self=False)
        start = stop

    matched = best_iou >= iou_threshold
    target = best_gt.clamp(min=0)
    target_ignored = gt_ignored[target] if len(gt_boxes) else torch.zeros(num_det, dtype=torch.bool, device=device)
    candidate = matched & ~target_ignored
    # the first candidate (in image-then-score order) of each ground truth is its TP
    rank = torch.arange(num_det, device=device)
    first_claim = torch.full((len(gt_boxes),), num_det, dtype=torch.long, device=device)
    first_claim.scatter_reduce_(0, target[candidate], rank[candidate], reduce="amin", include_self=True)
    tp = candidate & (first_claim[target] == rank) if len(gt_boxes) else candidate
    small = box_sizes(det_boxes) * scale[det_image] < min_size if min_size > 0 else torch.zeros_like(matched)
    counted = candidate | (~matched & ~small)
    return MatchResult(scores=det_scores[counted], tp=tp[counted], num_gt=int((~gt_ignored).sum().item()))


def average_precision(scores: Tensor, tp: Tensor, num_gt: int) -> tuple[float, float]:
    """VOC all-point AP and final recall of counted detections (scores (K,), tp (K,) bool).

    Without a counted ground truth (``num_gt`` 0) both are undefined: NaN, never 0.0 (a group
    without a labelled face has no AP, which a search or a best-checkpoint choice must not read
    as the worst one)."""
    if num_gt <= 0:
        return math.nan, math.nan
    order = torch.sort(scores.reshape(-1), descending=True, stable=True).indices
    hits = tp.reshape(-1)[order].double()
    tp_cum = torch.cumsum(hits, 0)
    fp_cum = torch.cumsum(1.0 - hits, 0)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum).clamp(min=torch.finfo(torch.float64).eps)
    zero, one = recall.new_zeros(1), recall.new_ones(1)
    mrec = torch.cat([zero, recall, one])
    mpre = torch.cat([zero, precision, zero])
    mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), 0).values, [0])
    steps = torch.nonzero(mrec[1:] != mrec[:-1]).reshape(-1)
    ap = torch.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).item()
    return float(ap), float(recall[-1].item()) if len(recall) else 0.0


@dataclass
class DetectionResult:
    """AP@IoU of a detection evaluation; ``groups`` holds the result of each attribute group
    (``"perceived_gender=female"``), see :func:`group_ignores`. ``ap50`` and ``recall`` are NaN
    when no ground truth is counted (``num_gt`` 0): :meth:`as_dict` gives None (JSON null)."""

    ap50: float
    num_gt: int
    num_det: int
    recall: float
    groups: dict[str, DetectionResult] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ap50": _defined(self.ap50),
            "num_gt": self.num_gt,
            "num_det": self.num_det,
            "recall": _defined(self.recall),
        }
        if self.groups:
            out["attributes"] = {}
            for key, result in self.groups.items():
                column, _, value = key.partition("=")
                out["attributes"].setdefault(column, {})[value] = result.as_dict()
        return out


def _defined(value: float) -> float | None:
    """``value``, or None where it is undefined (NaN)."""
    return None if math.isnan(value) else value


def undefined_groups(result: DetectionResult) -> list[str]:
    """The attribute groups (``"perceived_gender=female"``) of ``result`` without a counted face,
    whose AP is undefined."""
    return [key for key, group in result.groups.items() if group.num_gt == 0]


def group_ignores(
    ignore: Tensor,
    attributes: Sequence[dict[str, Sequence[str | None]] | None],
    counts: Sequence[int],
    groups: Sequence[tuple[str, str]],
) -> list[tuple[str, Tensor]]:
    """The ignore flags of the whole set (key ``""``) and of each attribute group (key
    ``"<attribute>=<value>"``): a group's AP treats the ground truths outside the group, or
    without a label, as ignore regions, as WIDER's easy/medium/hard subsets do.

    Args:
        ignore: (G,) bool ignore flags of all ground truths, image after image.
        attributes: per image, ``{attribute: [label per ground truth]}`` (or None).
        counts: per image, its number of ground truths.
        groups: the (attribute, value) pairs to evaluate.
    """
    out = [("", ignore)]
    for name, value in groups:
        labels = [label for attrs, n in zip(attributes, counts) for label in ((attrs or {}).get(name) or [None] * n)]
        outside = torch.tensor([label != value for label in labels], dtype=torch.bool, device=ignore.device).reshape(-1)
        out.append((f"{name}={value}", ignore | outside))
    return out


def flatten_per_image(
    preds: Sequence[tuple[Tensor, Tensor]], gts: Sequence[tuple[Tensor, Tensor]]
) -> tuple[Tensor, ...]:
    """Per-image ``(boxes, scores)`` and ``(boxes, ignore)`` lists -> the flat tensors of
    :func:`match_detections`: det boxes, scores, image index, gt boxes, image index, ignore."""

    def as_tensor(x) -> Tensor:
        return torch.as_tensor(x)

    det_boxes = torch.cat([as_tensor(b).reshape(-1, 4).double() for b, _ in preds]) if preds else torch.zeros(0, 4)
    det_scores = torch.cat([as_tensor(s).reshape(-1).double() for _, s in preds]) if preds else torch.zeros(0)
    det_image = torch.repeat_interleave(
        torch.arange(len(preds)), torch.tensor([len(as_tensor(s).reshape(-1)) for _, s in preds], dtype=torch.long)
    )
    gt_boxes = torch.cat([as_tensor(b).reshape(-1, 4).double() for b, _ in gts]) if gts else torch.zeros(0, 4)
    gt_ignore = (
        torch.cat([as_tensor(i).reshape(-1).bool() for _, i in gts]) if gts else torch.zeros(0, dtype=torch.bool)
    )
    gt_image = torch.repeat_interleave(
        torch.arange(len(gts)), torch.tensor([len(as_tensor(i).reshape(-1)) for _, i in gts], dtype=torch.long)
    )
    return det_boxes, det_scores, det_image, gt_boxes, gt_image, gt_ignore


def evaluate_detections(
    predictions: Sequence[tuple[Tensor, Tensor]],
    ground_truths: Sequence[tuple[Tensor, Tensor]],
    *,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    short_side: float | None = None,
    iou_threshold: float = 0.5,
    min_size: float = 0.0,
    attributes: Sequence[dict[str, Sequence[str | None]]] | None = None,
    groups: Sequence[tuple[str, str]] = (),
) -> DetectionResult:
    """AP of per-image detections against per-image ground truths.

    Args:
        predictions: per image, ``(boxes (D, 4) xyxy, scores (D,))``.
        ground_truths: per image (same order), ``(boxes (G, 4) xyxy, ignore (G,) bool)``.
        image_sizes: per image ``(height, width)``; needed with ``short_side``.
        short_side: measure sizes after scaling each image so its shorter side is this long.
        iou_threshold, min_size: see :func:`match_detections`.
        attributes: per image, ``{attribute: [label per ground truth]}``; with ``groups``
            (``[("perceived_gender", "female"), ...]``) each group's AP is in ``groups`` of
            the result (see :func:`group_ignores`).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truths)} images")
    scale = image_scales(image_sizes, short_side, len(ground_truths))
    det_boxes, det_scores, det_image, gt_boxes, gt_image, gt_ignore = flatten_per_image(predictions, ground_truths)
    results = {}
    counts = [len(torch.as_tensor(boxes).reshape(-1, 4)) for boxes, _ in ground_truths]
    for key, ignore in group_ignores(gt_ignore, attributes or [None] * len(counts), counts, groups):
        matched = match_detections(
            det_boxes,
            det_scores,
            det_image,
            gt_boxes,
            gt_image,
            ignore,
            image_scale=scale,
            iou_threshold=iou_threshold,
            min_size=min_size,
        )
        ap, recall = average_precision(matched.scores, matched.tp, matched.num_gt)
        results[key] = DetectionResult(ap50=ap, num_gt=matched.num_gt, num_det=len(matched.scores), recall=recall)
    overall = results.pop("")
    overall.groups = results
    return overall


def image_scales(
    image_sizes: Sequence[tuple[int, int]] | Tensor | None, short_side: float | None, num_images: int
) -> Tensor | None:
    """Per-image factor ``short_side / min(h, w)`` (None without ``short_side``)."""
    if short_side is None:
        return None
    if image_sizes is None:
        raise ValueError("short_side needs the image sizes")
    sizes = torch.as_tensor(image_sizes, dtype=torch.float64).reshape(-1, 2)
    if len(sizes) != num_images:
        raise ValueError(f"{len(sizes)} image sizes for {num_images} images")
    return short_side / sizes.min(dim=1).values
