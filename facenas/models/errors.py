"""Errors models raise for the training loop and the search driver to act on."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step.

    ``facenas fit`` reports it in one line (exit code 1); a search marks the trial failed.
    """


def check_finite_loss(module: LightningModule, loss: torch.Tensor, batch_idx: int, detail: str = "") -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch, step and batch (and ``detail``, e.g.
    the loss terms) when ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {module.current_epoch}, global step {module.global_step}, "
            f"batch {batch_idx}{detail}; lower the learning rate or check the data"
        )
