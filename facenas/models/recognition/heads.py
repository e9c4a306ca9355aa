"""Margin heads for face identification, in a registry by name (``arcface``, ``cosface``,
``magface``). A head maps embeddings (B, D) and labels (B,) to logits (B, C) and, where it has
one, a regulariser (a scalar to add to the loss); without labels it returns the scaled cosines.
``extra_margin`` (B,) is added to each sample's margin (group-dependent margins: the ``angular``
bias mitigation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facenas.core.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("head", case_sensitive=False)
register_head = HEADS.register


def create_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered head by name (case-insensitive: ``CosFace`` is ``cosface``)."""
    return HEADS.get(name)(embedding_dim, num_classes, **kwargs)


class _CosineHead(nn.Module):
    """Shared part: class centres on the unit sphere and the cosine of each embedding to each."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: Tensor) -> Tensor:
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1, 1)

    def target(self, cos_y: Tensor, embeddings: Tensor, extra: Tensor | float = 0.0) -> tuple[Tensor, Tensor | None]:
        """The label column's margin-adjusted cosine (B,) and the regulariser, from
        ``cos_y = cos(theta_y)`` and a per-sample ``extra`` margin; each head defines its margin here."""
        raise NotImplementedError

    def forward(
        self, embeddings: Tensor, labels: Tensor | None = None, extra_margin: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        cos = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos, None
        extra = 0.0 if extra_margin is None else extra_margin.to(cos.dtype)
        target, regularizer = self.target(cos.gather(1, labels[:, None])[:, 0], embeddings, extra)
        return self.scale * cos.scatter(1, labels[:, None], target[:, None]), regularizer


@register_head("cosface")
class CosFace(_CosineHead):
    """CosFace (large margin cosine loss): logits ``s * (cos(theta_y) - m)`` for the label,
    ``s * cos(theta_j)`` elsewhere. Defaults s = 64, m = 0.35."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = margin

    def target(self, cos_y: Tensor, embeddings: Tensor, extra: Tensor | float = 0.0) -> tuple[Tensor, Tensor | None]:
        return cos_y - (self.margin + extra), None


@register_head("arcface")
class ArcFace(_CosineHead):
    """ArcFace (additive angular margin): label logit ``s * cos(theta_y + m)``. Where
    ``theta + m > pi`` the function stops decreasing, so (as insightface) it continues linearly:
    ``cos(theta) - m * sin(m)`` when ``cos(theta) <= cos(pi - m)``. Defaults s = 64, m = 0.5."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = margin

    def target(self, cos_y: Tensor, embeddings: Tensor, extra: Tensor | float = 0.0) -> tuple[Tensor, Tensor | None]:
        return additive_angular(cos_y, self.margin + extra), None


def cos_plus(cos: Tensor, margin: Tensor) -> Tensor:
    """``cos(theta + m)`` for ``cos = cos(theta)``."""
    sin = (1.0 - cos * cos).clamp(min=0).sqrt()
    return cos * torch.cos(margin) - sin * torch.sin(margin)


def additive_angular(cos: Tensor, margin: Tensor | float) -> Tensor:
    """``cos(theta + m)`` for ``cos = cos(theta)``, continued linearly past ``theta + m = pi``."""
    margin = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    return torch.where(cos > torch.cos(math.pi - margin), cos_plus(cos, margin), cos - margin * torch.sin(margin))


@register_head("magface")
class MagFace(_CosineHead):
    """MagFace: an ArcFace margin that grows with the embedding's magnitude ``a`` (clamped to
    ``[l_a, u_a]``): ``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m``, and the regulariser
    ``lambda_g * mean(g(a))`` with ``g(a) = a / u_a^2 + 1 / a``. Defaults as FR-NAS: l_a 10,
    u_a 110, l_m 0.45, u_m 0.8, lambda_g 20, scale 32.

    Where ``theta + m(a) > pi`` (``cos(theta) <= cos(pi - m)``) the label logit is ``cos(theta)``
    unchanged, as FR-NAS's MagFace (src/head/metrics.py, ``margin_am = 0``). ``easy_margin``
    follows the official MagFace's default instead: no margin wherever ``cos(theta) <= 0``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 32.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 20.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale)
        self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g = l_a, u_a, l_m, u_m, lambda_g
        self.easy_margin = easy_margin

    def margin(self, magnitude: Tensor) -> Tensor:
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (magnitude - self.l_a) + self.l_m

    def regularizer(self, magnitude: Tensor) -> Tensor:
        return magnitude / self.u_a**2 + 1.0 / magnitude

    def target(self, cos_y: Tensor, embeddings: Tensor, extra: Tensor | float = 0.0) -> tuple[Tensor, Tensor | None]:
        magnitude = embeddings.float().norm(dim=1).clamp(self.l_a, self.u_a)
        margin = self.margin(magnitude) + extra
        valid = cos_y > 0 if self.easy_margin else cos_y > torch.cos(math.pi - margin)
        target = torch.where(valid, cos_plus(cos_y, margin), cos_y)
        return target, self.lambda_g * self.regularizer(magnitude).mean()


def focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal loss ``-(1 - p_y)^gamma log p_y``, averaged (gamma 0 is cross-entropy)."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
    return (-((1.0 - log_p.exp()) ** gamma) * log_p).mean()
