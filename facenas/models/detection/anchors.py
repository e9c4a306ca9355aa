"""RetinaFace anchors, box and landmark coding, and batched anchor matching.

Conventions: anchors are (A, 4) ``cx, cy, w, h`` in pixels of the network input; boxes are xyxy
pixels; landmarks are (..., 5, 2) pixels. Offsets use RetinaFace/SSD variances ``(0.1, 0.2)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from facenas.core.boxes import paired_iou

DEFAULT_STRIDES = (8, 16, 32)
DEFAULT_SIZES = ((16, 32), (64, 128), (256, 512))
DEFAULT_VARIANCES = (0.1, 0.2)


def make_anchors(
    height: int,
    width: int,
    strides: Sequence[int] = DEFAULT_STRIDES,
    sizes: Sequence[Sequence[int]] = DEFAULT_SIZES,
    device: torch.device | str | None = None,
) -> Tensor:
    """Square anchors centred on every cell of every level, in RetinaFace's order
    (level, row, column, size) -> (A, 4) ``cx, cy, w, h``.

    640 x 640 with the defaults gives (80^2 + 40^2 + 20^2) x 2 = 16,800 anchors.
    """
    levels = []
    for stride, level_sizes in zip(strides, sizes):
        rows, cols = -(-height // stride), -(-width // stride)  # ceil, as the feature maps
        cy, cx = torch.meshgrid(
            (torch.arange(rows, device=device) + 0.5) * stride,
            (torch.arange(cols, device=device) + 0.5) * stride,
            indexing="ij",
        )
        side = torch.tensor(level_sizes, dtype=torch.float32, device=device)
        k = len(level_sizes)
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, k, 2)
        wh = side.reshape(1, k, 1).expand(centres.shape[0], k, 2)
        levels.append(torch.cat([centres, wh], -1).reshape(-1, 4))
    return torch.cat(levels).float()


@dataclass(frozen=True)
class AnchorGrid:
    """The layout :func:`make_anchors` follows, so that matching can visit only the anchors
    near each face instead of all of them."""

    height: int
    width: int
    strides: tuple[int, ...] = DEFAULT_STRIDES
    sizes: tuple[tuple[int, ...], ...] = DEFAULT_SIZES

    def anchors(self, device: torch.device | str | None = None) -> Tensor:
        return make_anchors(self.height, self.width, self.strides, self.sizes, device)

    def candidates(self, boxes: Tensor, min_iou: float = 0.0) -> tuple[Tensor, Tensor]:
        """The (face, anchor) pairs that matching must look at.

        For each level, the cells whose anchors centred there can reach the face. With
        ``min_iou``, an anchor size is skipped for a face when even a perfectly centred anchor of
        that size would overlap it less (so the pair could only ever be background), except the
        face's best-fitting size, which always stays so that the face can claim its best anchor.

        Returns face indices (P,) and anchor indices (P,).
        """
        device = boxes.device
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        sides = torch.tensor([k for level in self.sizes for k in level], dtype=boxes.dtype, device=device)
        # IoU of the face with a square of each side sharing its centre: the most that size can give
        inter = torch.minimum(wh[:, None, 0], sides) * torch.minimum(wh[:, None, 1], sides)
        bound = inter / (wh.prod(1)[:, None] + sides**2 - inter).clamp(min=1e-9)  # (T, sizes)
        needed = (bound >= min_iou) | (bound == bound.max(dim=1, keepdim=True).values)
        k = anchors_per_location(self.sizes)
        levels = len(self.strides)
        rows = torch.tensor([-(-self.height // st) for st in self.strides], device=device)
        cols = torch.tensor([-(-self.width // st) for st in self.strides], device=device)
        offset = torch.cumsum(rows * cols * k, 0) - rows * cols * k
        stride = torch.tensor(self.strides, dtype=boxes.dtype, device=device)
        reach = torch.tensor([max(level) / 2 for level in self.sizes], dtype=boxes.dtype, device=device)
        # every (face, level) with a needed size, all levels at once (index_select, not tensor
        # indexing: the latter is several times slower on CPU for these sizes)
        face, level = torch.nonzero(needed.reshape(-1, levels, k).any(dim=2), as_tuple=True)
        box, st = _sel(boxes, face), _sel(stride, level)
        reach_l, cc, rc = _sel(reach, level), _sel(cols, level) - 1, _sel(rows, level) - 1
        c0 = torch.minimum(torch.floor((box[:, 0] - reach_l) / st - 0.5).long().clamp(min=0), cc)
        c1 = torch.minimum(torch.ceil((box[:, 2] + reach_l) / st - 0.5).long().clamp(min=0), cc)
        r0 = torch.minimum(torch.floor((box[:, 1] - reach_l) / st - 0.5).long().clamp(min=0), rc)
        r1 = torch.minimum(torch.ceil((box[:, 3] + reach_l) / st - 0.5).long().clamp(min=0), rc)
        ncols = c1 - c0 + 1
        cells = ncols * (r1 - r0 + 1)
        pick = torch.repeat_interleave(torch.arange(len(face), device=device), cells)
        local = torch.arange(len(pick), device=device) - torch.repeat_interleave(torch.cumsum(cells, 0) - cells, cells)
        ncols_p, level_p = _sel(ncols, pick), _sel(level, pick)
        cell = (_sel(r0, pick) + local // ncols_p) * _sel(cols, level_p) + _sel(c0, pick) + local % ncols_p
        anchor = (_sel(offset, level_p) + cell * k)[:, None] + torch.arange(k, device=device)[None, :]
        face_p = _sel(face, pick)
        wanted = (face_p * levels + level_p)[:, None] * k + torch.arange(k, device=device)  # flat index into needed
        keep = torch.nonzero(_sel(needed.reshape(-1), wanted.reshape(-1))).reshape(-1)
        return _sel(face_p.repeat_interleave(k), keep), _sel(anchor.reshape(-1), keep)


def _sel(x: Tensor, index: Tensor) -> Tensor:
    return x.index_select(0, index)


@functools.lru_cache(maxsize=16)
def grid_anchors(grid: AnchorGrid) -> Tensor:
    """The CPU anchors of ``grid``, made once per layout and input size (a runtime outside the
    LightningModule, which caches its own, calls this for every image of the same size). Shared:
    callers must not modify it in place."""
    return grid.anchors()


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
    return torch.cat(
        [
            (centre - anchors[..., :2]) / (variances[0] * anchors[..., 2:]),
            torch.log(wh / anchors[..., 2:]) / variances[1],
        ],
        -1,
    )


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


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_image: Tensor,
    batch_size: int,
    gt_ignore: Tensor | None = None,
    pos_iou: float = 0.5,
    neg_iou: float | None = None,
    grid: AnchorGrid | None = None,
    force_iou: float = 0.2,
) -> Matches:
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

        grid: the layout ``anchors`` were made with; with it only the (face, anchor) pairs that
            can overlap are evaluated (a few thousand per face instead of every anchor).
        force_iou: a non-ignored face whose best anchor overlaps it at least this much claims
            that anchor as a positive even below ``pos_iou`` (Pytorch_Retinaface's ``match``:
            0.2). Faces too small for any anchor stay unmatched rather than teach offsets of
            several anchor sizes. When two faces claim one anchor, the face it overlaps more gets
            it (equal overlap: the earlier face).

    Faces are packed (no padding to the most crowded image) and all reductions are
    scatter operations over (face, anchor) pairs, so the batch is matched at once.
    """
    neg_iou = pos_iou / 2 + 0.05 if neg_iou is None else neg_iou
    num_faces, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    device = anchors.device
    if num_faces == 0:
        zeros = torch.zeros(batch_size, num_anchors, dtype=torch.long, device=device)
        return Matches(labels=zeros, gt_index=zeros.clone())
    gt_boxes = gt_boxes.float()
    if grid is not None:
        face, anchor = grid.candidates(gt_boxes, min_iou=neg_iou)
        iou = paired_iou(_sel(gt_boxes, face), _sel(anchors_xyxy(anchors), anchor))
    else:
        iou = box_iou(gt_boxes, anchors_xyxy(anchors)).reshape(-1)  # (T * A)
        face = torch.arange(num_faces, device=device).repeat_interleave(num_anchors)
        anchor = torch.arange(num_anchors, device=device).repeat(num_faces)
    # best IoU of every (image, anchor) over its image's faces
    key = _sel(gt_image, face) * num_anchors + anchor
    best_iou = torch.full((batch_size * num_anchors,), -1.0, device=device)
    best_iou.scatter_reduce_(0, key, iou, reduce="amax", include_self=True)
    # the face of each positive anchor: the first face reaching its maximum (others never read)
    strong = torch.nonzero((iou >= pos_iou) & (iou == _sel(best_iou, key))).reshape(-1)
    gt_index = torch.zeros(batch_size * num_anchors, dtype=torch.long, device=device)
    gt_index.scatter_reduce_(0, _sel(key, strong), _sel(face, strong), reduce="amin", include_self=False)
    # best anchor of every face: the first anchor reaching its maximum
    face_best = torch.full((num_faces,), -1.0, device=device).scatter_reduce_(
        0, face, iou, reduce="amax", include_self=True
    )
    at_face_max = torch.nonzero(iou == _sel(face_best, face)).reshape(-1)
    best_anchor = torch.full((num_faces,), num_anchors, dtype=torch.long, device=device)
    best_anchor.scatter_reduce_(0, _sel(face, at_face_max), _sel(anchor, at_face_max), reduce="amin", include_self=True)

    ignore = gt_ignore.bool() if gt_ignore is not None else torch.zeros(num_faces, dtype=torch.bool, device=device)
    claim = torch.nonzero(~ignore & (best_anchor < num_anchors) & (face_best >= force_iou)).reshape(-1)
    forced = _sel(gt_image, claim) * num_anchors + _sel(best_anchor, claim)
    # one winner per claimed anchor: the largest overlap, then the smallest face index
    claim_iou = _sel(face_best, claim)
    top = torch.full((batch_size * num_anchors,), -1.0, device=device)
    top.scatter_reduce_(0, forced, claim_iou, reduce="amax", include_self=True)
    at_top = claim_iou == _sel(top, forced)
    winner = torch.full((batch_size * num_anchors,), num_faces, dtype=torch.long, device=device)
    winner.scatter_reduce_(0, forced[at_top], claim[at_top], reduce="amin", include_self=True)
    gt_index.index_copy_(0, forced, _sel(winner, forced))  # duplicates write the same winner
    best_iou.index_fill_(0, forced, 2.0)

    labels = (best_iou >= neg_iou).to(torch.int8).neg_()  # -1 from the negative threshold up
    labels.masked_fill_(best_iou >= pos_iou, 1)
    positive = torch.nonzero(labels == 1).reshape(-1)
    matched_ignore = _sel(ignore, _sel(gt_index, positive))
    labels.index_fill_(0, positive[matched_ignore], -1)  # positives of ignore regions are ignored
    labels, gt_index = labels.reshape(batch_size, num_anchors), gt_index.reshape(batch_size, num_anchors)
    return Matches(labels=labels, gt_index=gt_index)
