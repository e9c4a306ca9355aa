"""Bias-mitigation methods FR-NAS compares its searched architectures with (section 4, Table 1),
each a switch on :class:`FaceID` by name, as the heads are::

    model:
      init_args:
        mitigation: flipped          # or angular, sensitivenets
        mitigation_args: {fraction: 0.1}

* ``flipped`` (Chang et al.): during training, each label of the better group (the higher
  accuracy) is flipped with probability ``fraction`` to a uniformly random other identity.
* ``angular`` (Wang and Deng): group-dependent angular margins: an extra margin added to the
  head's own (CosFace ``m``, ArcFace ``m``, MagFace ``m(a)``) for the group with the higher error.
* ``sensitivenets`` (Morales et al.): a sensitive-information removal network on top of a
  (pretrained, frozen) feature extractor, trained with an adversary that predicts the protected
  attribute from its output through a gradient-reversal layer: the removal network learns to
  make the attribute unpredictable while the margin head keeps identification.

Where a method needs "the better group", it is either fixed by name (``group``) or read from
the last validation's per-group accuracy (``val/accuracy_<group>``, logged by
``facenas.callbacks.FairnessMetrics``); until a validation has run, no group is chosen and the method
does nothing (``train/mitigation_group`` is logged as -1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facenas.core.registry import Registry

MITIGATIONS: Registry[type[Mitigation]] = Registry("mitigation", case_sensitive=False)


def create_mitigation(name: str, **kwargs: Any) -> Mitigation:
    """Build a registered mitigation method by name (``flipped``, ``angular``, ``sensitivenets``)."""
    return MITIGATIONS.get(name)(**kwargs)


class Mitigation(nn.Module):
    """What FaceID asks a method, with the no-op answers. ``bind`` gives it the group names;
    ``observe`` the last validation's per-group accuracy (group name -> accuracy).
    ``transforms``: whether ``transform`` adds a layer on top of the embeddings."""

    transforms = False

    def __init__(self) -> None:
        super().__init__()
        self.group_names: list[str] = []
        self.accuracy: dict[str, float] = {}

    def bind(self, model: nn.Module, group_names: Sequence[str]) -> None:
        self.group_names = list(group_names)

    def observe(self, accuracy: Mapping[str, float]) -> None:
        self.accuracy = dict(accuracy)

    def _group(self, fixed: str | None, best: bool) -> int:
        """Index of the fixed group, else of the best (highest accuracy) or worst group of the
        last validation; -1 when not known yet."""
        if fixed is not None:
            if fixed not in self.group_names:
                raise ValueError(f"mitigation group {fixed!r} is not one of the data's groups {self.group_names}")
            return self.group_names.index(fixed)
        known = {g: a for g, a in self.accuracy.items() if g in self.group_names}
        if len(known) < 2:
            return -1
        pick = max if best else min
        return self.group_names.index(pick(sorted(known), key=lambda g: known[g]))

    def labels(self, labels: Tensor, groups: Tensor, num_classes: int) -> tuple[Tensor, dict[str, float]]:
        """The training labels the head sees, and values to log."""
        return labels, {}

    def extra_margin(self, groups: Tensor) -> Tensor | None:
        """Per-sample margin added to the head's own, or None."""
        return None

    def transform(self, embeddings: Tensor) -> Tensor:
        """The embeddings the head and the evaluation see."""
        return embeddings

    def loss(self, embeddings: Tensor, groups: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        """An extra training loss on the (transformed) embeddings, and values to log."""
        return None, {}


@MITIGATIONS.register("flipped")
class Flipped(Mitigation):
    """Label flipping in the better group (Chang et al.).

    Args:
        fraction: probability that a training sample of the group is given a random other identity.
        group: the group to flip (by name); None: the group with the higher accuracy at the last
            validation.
    """

    def __init__(self, fraction: float = 0.1, group: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"flipped: fraction must be in [0, 1], got {fraction}")
        self.fraction, self.group = fraction, group

    def labels(self, labels: Tensor, groups: Tensor, num_classes: int) -> tuple[Tensor, dict[str, float]]:
        g = self._group(self.group, best=True)
        if g < 0 or num_classes < 2:
            return labels, {"mitigation_group": float(g), "flipped": 0.0}
        flip = (groups == g) & (labels >= 0) & (torch.rand(labels.shape, device=labels.device) < self.fraction)
        # a uniform other identity: shift by 1 .. C-1 (never the sample's own)
        shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
        flipped = torch.where(flip, (labels + shift) % num_classes, labels)
        return flipped, {"mitigation_group": float(g), "flipped": flip.float().mean().item()}


@MITIGATIONS.register("angular")
class Angular(Mitigation):
    """Group-dependent angular margins (Wang and Deng).

    Args:
        margin: the extra margin of the group with the higher error at the last validation (the
            others get 0).
        margins: fixed extra margins by group name instead (groups not named get 0).
    """

    def __init__(self, margin: float = 0.1, margins: dict[str, float] | None = None) -> None:
        super().__init__()
        self.margin, self.margins = margin, dict(margins) if margins else None

    def bind(self, model: nn.Module, group_names: Sequence[str]) -> None:
        super().bind(model, group_names)
        unknown = sorted(set(self.margins or ()) - set(self.group_names))
        if unknown:
            raise ValueError(f"angular: margins name groups {unknown} that the data does not have ({self.group_names})")

    def group_margins(self) -> list[float]:
        """The extra margin of each group index."""
        if self.margins is not None:
            return [float(self.margins.get(name, 0.0)) for name in self.group_names]
        worst = self._group(None, best=False)
        return [self.margin if i == worst else 0.0 for i in range(len(self.group_names))]

    def extra_margin(self, groups: Tensor) -> Tensor | None:
        table = torch.tensor(self.group_margins() + [0.0], device=groups.device)  # index -1: unknown group
        return table[groups.long()]


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, gradient times -weight backward (Ganin and Lempitsky's gradient reversal)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: float) -> Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.weight * grad, None


@MITIGATIONS.register("sensitivenets")
class SensitiveNets(Mitigation):
    """A sensitive-information removal network with an adversarial regulariser (Morales et al.).

    The removal network is residual (``z + MLP(z)``, its last layer initialised to zero, so it
    starts as the identity). The adversary (an MLP) is trained to predict the group from the
    removal network's output; the gradient reaching the removal network through it is reversed
    and scaled by ``weight``, so the same backward pass trains the adversary to find the
    attribute and the removal network to hide it. ``train/adversary_accuracy`` is logged.

    Args:
        extractor: a FaceID checkpoint whose backbone and neck become the (frozen) feature
            extractor, as the paper trains SensitiveNets on top of a pretrained model. None: the
            backbone is not frozen and trains with the removal network.
        hidden: width of the removal network's hidden layer (default: the embedding size).
        adversary_hidden: width of the adversary's hidden layer.
        weight: the adversarial regulariser's weight (the gradient-reversal factor).
    """

    transforms = True

    def __init__(
        self, extractor: str | None = None, hidden: int | None = None, adversary_hidden: int = 64, weight: float = 1.0
    ) -> None:
        super().__init__()
        self.extractor, self.hidden, self.adversary_hidden, self.weight = extractor, hidden, adversary_hidden, weight
        self.removal: nn.Module | None = None
        self.adversary: nn.Module | None = None
        self.freezes_extractor = False

    def bind(self, model: nn.Module, group_names: Sequence[str]) -> None:
        super().bind(model, group_names)
        dim = model.embedding_size
        if self.removal is None:
            hidden = self.hidden or dim
            self.removal = nn.Sequential(
                nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.PReLU(), nn.Linear(hidden, dim)
            )
            nn.init.zeros_(self.removal[-1].weight)
            nn.init.zeros_(self.removal[-1].bias)
        if self.adversary is None:
            self.adversary = nn.Sequential(
                nn.Linear(dim, self.adversary_hidden),
                nn.ReLU(),
                nn.Linear(self.adversary_hidden, max(2, len(group_names))),
            )
        if self.extractor is not None:
            self._load_extractor(model)

    def _load_extractor(self, model: nn.Module) -> None:
        from facenas.core.errors import UserError

        try:
            state = torch.load(self.extractor, map_location="cpu", weights_only=False)["state_dict"]
        except (OSError, KeyError) as exc:
            raise UserError(f"sensitivenets: cannot read the extractor checkpoint {self.extractor}: {exc}") from None
        parts = {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}
        missing, unexpected = model.load_state_dict(parts, strict=False)
        missing = [k for k in missing if k.startswith(("backbone.", "neck."))]
        if missing or unexpected:
            raise UserError(
                f"sensitivenets: the extractor {self.extractor} does not match this model's backbone and neck "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        for module in (model.backbone, model.neck):
            if module is not None:
                module.requires_grad_(False)
                module.eval()  # Lightning keeps each submodule's mode; FaceID.train() keeps this one
        self.freezes_extractor = True  # FaceID keeps the frozen extractor in eval mode (its BatchNorm statistics)

    def transform(self, embeddings: Tensor) -> Tensor:
        return embeddings + self.removal(embeddings)

    def loss(self, embeddings: Tensor, groups: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        known = groups >= 0
        if not bool(known.any()):
            return None, {}
        logits = self.adversary(_ReverseGradient.apply(embeddings[known].float(), self.weight))
        target = groups[known].long()
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(1) == target).float().mean()
        return loss, {"adversary_loss": loss.detach(), "adversary_accuracy": accuracy}
