"""Box geometry on (N, 4) xyxy tensors, shared by anchor matching and the AP metric."""

from __future__ import annotations

import torch
from torch import Tensor


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box ``a[i]`` with box ``b[i]`` (both (P, 4) xyxy) -> (P,).

    torchvision.ops.box_iou computes all N x M pairs; here only matched rows are needed.
    """
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def box_sizes(boxes: Tensor) -> Tensor:
    """``sqrt(w * h)`` of (N, 4) xyxy boxes -> (N,)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return (wh[:, 0] * wh[:, 1]).sqrt()
