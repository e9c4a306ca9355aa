"""RetinaFace anchors, box and landmark coding, and batched anchor matching.

Conventions: anchors are (A, 4) ``cx, cy, w, h`` in pixels of the network input; boxes are xyxy
pixels; landmarks are (..., 5, 2) pixels. Offsets use RetinaFace/SSD variances ``(0.1, 0.2)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

DEFAULT_STRIDES = (8, 16, 32)
DEFAULT_SIZES = ((16, 32), (64, 128), (256, 512))
DEFAULT_VARIANCES = (0.1, 0.2)


def make_anchors(height: int, width: int, strides: Sequence[int] = DEFAULT_STRIDES,
                 sizes: Sequence[Sequence[int]] = DEFAULT_SIZES, device: torch.device | str | None = None) -> Tensor:
    """Square anchors centred on every cell of every level, in RetinaFace's order
    (level, row, column, size) -> (A, 4) ``cx, cy, w, h``.

    640 x 640 with the defaults gives (80^2 + 40^2 + 20^2) x 2 = 16,800 anchors.
    """
    levels = []
    for stride, level_sizes in zip(strides, sizes):
        rows, cols = -(-height // stride), -(-width // stride)  # ceil, as the feature maps
        cy, cx = torch.meshgrid((torch.arange(rows, device=device) + 0.5) * stride,
                                (torch.arange(cols, device=device) + 0.5) * stride, indexing="ij")
        side = torch.tensor(level_sizes, dtype=torch.float32, device=device)
        k = len(level_sizes)
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, k, 2)
        wh = side.reshape(1, k, 1).expand(centres.shape[0], k, 2)
        levels.append(torch.cat([centres, wh], -1).reshape(-1, 4))
    return torch.cat(levels).float()


def anchors_per_location(sizes: Sequence[Sequence[int]] = DEFAULT_SIZES) -> int:
    """Anchors at each cell (the heads' output multiplicity); every level must have the same."""
    counts = {len(s) for s in sizes}
    if len(counts) != 1:
        raise ValueError(f"every level needs the same number of anchor sizes, got {list(sizes)}")
    return counts.pop()


def encode_boxes(boxes: Tensor, anchors: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES) -> Tensor:
    """xyxy boxes (..., 4) matched to anchors (..., 4) -> offsets (..., 4)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)
    return torch.cat([(centre - anchors[..., :2]) / (variances[0] * anchors[..., 2:]),
                      torch.log(wh / anchors[..., 2:]) / variances[1]], -1)


def decode_boxes(offsets: Tensor, anchors: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES) -> Tensor:
    """Offsets (..., 4) -> xyxy boxes (..., 4); the inverse of :func:`encode_boxes`."""
    centre = anchors[..., :2] + offsets[..., :2] * variances[0] * anchors[..., 2:]
    wh = anchors[..., 2:] * torch.exp(offsets[..., 2:] * variances[1])
    return torch.cat([centre - wh / 2, centre + wh / 2], -1)


def encode_landmarks(points: Tensor, anchors: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES) -> Tensor:
    """Landmarks (..., 5, 2) -> offsets (..., 10) relative to their anchors (..., 4)."""
    rel = (points - anchors[..., None, :2]) / (variances[0] * anchors[..., None, 2:])
    return rel.flatten(-2)


def decode_landmarks(offsets: Tensor, anchors: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES) -> Tensor:
    """Offsets (..., 10) -> landmarks (..., 5, 2); the inverse of :func:`encode_landmarks`."""
    rel = offsets.unflatten(-1, (5, 2))
    return anchors[..., None, :2] + rel * variances[0] * anchors[..., None, 2:]


def anchors_xyxy(anchors: Tensor) -> Tensor:
    """``cx, cy, w, h`` -> xyxy."""
    return torch.cat([anchors[..., :2] - anchors[..., 2:] / 2, anchors[..., :2] + anchors[..., 2:] / 2], -1)


@dataclass
class Matches:
    """Anchor assignments of a batch: ``labels`` (B, A) with 1 face, 0 background, -1 ignored;
    ``gt_index`` (B, A) the index (into the batch's packed ground truths) of every anchor's
    matched face, valid where ``labels == 1``."""

    labels: Tensor
    gt_index: Tensor


def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_image: Tensor, batch_size: int, gt_ignore: Tensor | None = None,
                  pos_iou: float = 0.5, neg_iou: float | None = None) -> Matches:
    """Assign anchors to the ground truths of a whole batch at once.

    Args:
        anchors: (A, 4) ``cx, cy, w, h``.
        gt_boxes: (T, 4) xyxy, every image's faces packed one after another.
        gt_image: (T,) int64, the image of each face.
        batch_size: B, the number of images (some may have no faces).
        gt_ignore: (T,) bool, ignore regions (crowds, WIDER invalid): anchors they claim are
            neither positive nor negative.
        pos_iou: anchors with IoU >= this with their best ground truth are faces.
        neg_iou: anchors whose best IoU is below this are background; in between they are
            ignored (default ``pos_iou / 2 + 0.05``, HyperFD's bands).

    Every non-ignored face also claims its single best anchor, so no face goes unmatched however
    small it is. IoUs are (T, A): packed faces, no padding to the most crowded image.
    """
    neg_iou = pos_iou / 2 + 0.05 if neg_iou is None else neg_iou
    num_faces, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    device = anchors.device
    if num_faces == 0:
        zeros = torch.zeros(batch_size, num_anchors, dtype=torch.long, device=device)
        return Matches(labels=zeros, gt_index=zeros.clone())
    iou = box_iou(gt_boxes.float(), anchors_xyxy(anchors))              # (T, A)
    rows = gt_image[:, None].expand(num_faces, num_anchors)
    best_iou = torch.full((batch_size, num_anchors), -1.0, device=device)
    best_iou.scatter_reduce_(0, rows, iou, reduce="amax", include_self=True)
    # the best face of each anchor: the first one reaching its image's maximum
    face = torch.arange(num_faces, device=device)[:, None].expand(num_faces, num_anchors)
    at_max = iou == best_iou[gt_image]
    gt_index = torch.full((batch_size, num_anchors), num_faces, dtype=torch.long, device=device)
    gt_index.scatter_reduce_(0, rows, torch.where(at_max, face, num_faces), reduce="amin", include_self=True)

    ignore = gt_ignore.bool() if gt_ignore is not None else torch.zeros(num_faces, dtype=torch.bool, device=device)
    claim = torch.nonzero(~ignore).reshape(-1)
    forced = iou[claim].argmax(dim=1)
    gt_index[gt_image[claim], forced] = claim
    best_iou[gt_image[claim], forced] = 2.0

    gt_index = gt_index.clamp(max=num_faces - 1)  # anchors of images without faces: label 0 below
    labels = torch.full_like(gt_index, -1)
    labels[best_iou < neg_iou] = 0
    labels[(best_iou >= pos_iou) & ~ignore[gt_index]] = 1
    return Matches(labels=labels, gt_index=gt_index)
