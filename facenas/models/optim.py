"""Optimisers by name, shared by the LightningModules."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_optimizer_values(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
    """Raise a ``ValueError`` naming the argument when ``lr`` is not positive or ``momentum`` or
    ``weight_decay`` is negative; the models call it in their constructors, so that a bad value
    is refused before training starts (the command line names the config key)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not momentum >= 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw`` (case-insensitive)."""
    check_optimizer_values(lr, momentum, weight_decay)
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be sgd, adam or adamw, got {name!r}")
