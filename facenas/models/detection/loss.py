"""RetinaFace's multi-box loss with HyperFD's knobs, batched over the whole batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import (
    DEFAULT_VARIANCES,
    AnchorGrid,
    encode_boxes,
    encode_landmarks,
    match_anchors,
)


class MultiBoxLoss(nn.Module):
    """Face score, box and landmark loss over matched anchors.

    * Matching (:func:`match_anchors`): IoU >= ``pos_iou`` is a face, below ``neg_iou``
      (default ``pos_iou / 2 + 0.05``) background, in between ignored; a face whose best anchor
      overlaps it at least ``force_iou`` also claims that anchor (Pytorch_Retinaface: 0.2).
    * Score: cross-entropy over the positives and the hardest negatives, ``neg_pos_ratio``
      negatives per positive in each image (hard negative mining).
    * Box: smooth-L1 of the encoded offsets of the positives, weighted by ``loc_weight``.
    * Landmarks: smooth-L1 over positives whose face has landmarks, weighted by ``landmark_weight``.

    Score and box terms are divided by the number of positives in the batch; the landmark term
    by the number of positives with landmarks.
    """

    def __init__(
        self,
        pos_iou: float = 0.5,
        neg_iou: float | None = None,
        force_iou: float = 0.2,
        loc_weight: float = 2.0,
        neg_pos_ratio: float = 7.0,
        landmark_weight: float = 1.0,
        variances: Sequence[float] = DEFAULT_VARIANCES,
    ) -> None:
        super().__init__()
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.force_iou = force_iou
        self.loc_weight = loc_weight
        self.neg_pos_ratio = neg_pos_ratio
        self.landmark_weight = landmark_weight
        self.variances = tuple(variances)

    def forward(
        self,
        scores: Tensor,
        boxes: Tensor,
        landmarks: Tensor,
        anchors: Tensor,
        targets: dict[str, Tensor],
        grid: AnchorGrid | None = None,
    ) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            scores: (B, A, 2) logits (background, face).
            boxes: (B, A, 4) predicted box offsets.
            landmarks: (B, A, 10) predicted landmark offsets.
            anchors: (A, 4) ``cx, cy, w, h``.
            targets: the batch's faces packed: ``boxes`` (T, 4) xyxy, ``image`` (T,) int64,
                ``ignore`` (T,) bool, ``landmarks`` (T, 5, 2) with NaN where absent.
            grid: the anchors' layout, for sparse matching (see :func:`match_anchors`).

        Returns:
            ``loss`` (the weighted sum), ``loc``, ``conf``, ``landmarks``, ``num_pos``.
        """
        batch = scores.shape[0]
        match = match_anchors(
            anchors,
            targets["boxes"],
            targets["image"],
            batch,
            targets.get("ignore"),
            pos_iou=self.pos_iou,
            neg_iou=self.neg_iou,
            grid=grid,
            force_iou=self.force_iou,
        )
        pos = match.labels == 1
        num_pos = pos.sum()
        norm = num_pos.clamp(min=1).float()

        anchor_pos = anchors.expand(batch, -1, -1)[pos]
        gt_index = match.gt_index[pos]
        box_target = encode_boxes(targets["boxes"][gt_index].float(), anchor_pos, self.variances)
        loc = F.smooth_l1_loss(boxes[pos], box_target, reduction="sum") / norm

        marks = targets["landmarks"][gt_index].float()
        has_marks = torch.isfinite(marks).flatten(1).all(dim=1)
        if has_marks.any():
            mark_target = encode_landmarks(marks[has_marks], anchor_pos[has_marks], self.variances)
            landmark = (
                F.smooth_l1_loss(landmarks[pos][has_marks], mark_target, reduction="sum") / has_marks.sum().float()
            )
        else:
            landmark = landmarks.sum() * 0.0  # keeps the graph (and DDP's used parameters) intact

        # hard negative mining: the highest-loss background anchors, ratio x positives per image
        # two-class cross-entropy is the logistic loss of the logit margin (cross_entropy's
        # log-softmax over a last dimension of 2 costs 2-3x more on CPU, benchmarks/claims.py)
        ce = F.binary_cross_entropy_with_logits(scores[..., 1] - scores[..., 0], pos.to(scores.dtype), reduction="none")
        candidates = match.labels == 0
        mining = ce.detach().masked_fill(~candidates, -1.0)
        num_neg = torch.minimum((self.neg_pos_ratio * pos.sum(dim=1)).long(), candidates.sum(dim=1))
        k = int(num_neg.max().item())
        neg = torch.zeros_like(pos)
        if k > 0:
            hardest = mining.topk(k, dim=1).indices
            neg.scatter_(1, hardest, torch.arange(k, device=scores.device)[None, :] < num_neg[:, None])
        conf = ce[pos | neg].sum() / norm

        loss = self.loc_weight * loc + conf + self.landmark_weight * landmark
        return {
            "loss": loss,
            "loc": loc.detach(),
            "conf": conf.detach(),
            "landmarks": landmark.detach(),
            "num_pos": num_pos.detach(),
            "num_neg": neg.sum().detach(),
        }
