"""Face verification accuracy on insightface pair sets (LFW, CFP-FP, AgeDB-30 ``.bin``).

Pair images are decoded ``batch_size`` at a time and only their embeddings are kept: an
LFW-size set (12,000 images) costs its JPEG bytes and a (12,000, D) embedding matrix, never the
1.8 GB of float tensors its decoded 112 x 112 images would take at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.model_selection import KFold


def verification_accuracy(
    distances: np.ndarray, issame: np.ndarray, folds: int = 10, thresholds: np.ndarray | None = None
) -> tuple[float, float]:
    """Insightface's protocol: in each of ``folds`` folds, the distance threshold that is most
    accurate on the other folds is applied to the held-out fold. Returns (mean, std) accuracy.

    Args:
        distances: (P,) distance of each pair's embeddings.
        issame: (P,) bool, whether each pair shows one person.
    """
    thresholds = np.arange(0, 4, 0.01) if thresholds is None else thresholds
    issame = np.asarray(issame, dtype=bool)
    predicted = distances[None, :] < thresholds[:, None]  # (thresholds, P)
    correct = predicted == issame[None, :]
    accuracies = []
    for train, test in KFold(n_splits=folds, shuffle=False).split(distances):
        best = int(correct[:, train].mean(axis=1).argmax())
        accuracies.append(correct[best, test].mean())
    return float(np.mean(accuracies)), float(np.std(accuracies))


def embed_pairs(
    embed: Callable[[torch.Tensor], torch.Tensor],
    pairs: Any,
    image_size: int = 112,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Embeddings (N, D) on the CPU of a pair set's N images (``pairs.decode(i)`` -> PIL image),
    decoding and embedding ``batch_size`` images at a time."""
    from facenas.datamodules.recognition.datamodule import eval_transform

    transform = eval_transform(image_size)  # the identification data's evaluation input
    n = len(pairs.images)
    out = torch.zeros(0, 0)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = embed(torch.stack([transform(pairs.decode(i)) for i in range(start, stop)]).to(device)).float()
        if start == 0:
            # one (N, D) block allocated up front: a list of small per-batch results, each left
            # between the large freed image batches, fragments the heap and keeps it from shrinking
            out = torch.empty(n, batch.shape[1])
        out[start:stop] = batch.cpu()
    return out


def pair_set_accuracy(
    embed: Callable[[torch.Tensor], torch.Tensor],
    pairs: Any,
    image_size: int = 112,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    folds: int = 10,
) -> tuple[float, float]:
    """10-fold verification accuracy (mean, std) of a model's ``embed`` on a pair set, streamed."""
    emb = embed_pairs(embed, pairs, image_size, batch_size, device)
    distances = (emb[0::2] - emb[1::2]).norm(dim=1).numpy()
    return verification_accuracy(distances, pairs.issame, folds)


class VerificationAccuracy(Callback):
    """Logs ``val/<name>_accuracy`` (10-fold, best threshold) for each pair set at the end of every
    validation, from the model's ``embed(images)`` (flip-summed, L2-normalised embeddings). The
    pairs are streamed (see the module's note); under DDP only rank 0 reads, decodes and embeds
    them, and the other ranks receive its accuracy.

    Args:
        sets: ``{name: path to an insightface .bin}``.
        image_size: side the pair images are resized to (the model's input size).
        batch_size: images per forward pass.
    """

    def __init__(self, sets: dict[str, str], image_size: int = 112, batch_size: int = 64) -> None:
        self.sets = dict(sets)
        self.image_size = image_size
        self.batch_size = batch_size
        self._pairs: dict[str, Any] = {}  # the encoded pairs (rank 0), read once

    def _load(self, name: str) -> Any:
        if name not in self._pairs:
            from facenas.datamodules.recognition.formats import read_verification_bin

            self._pairs[name] = read_verification_bin(Path(self.sets[name]))
        return self._pairs[name]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name in self.sets:
            accuracy = math.nan
            if trainer.global_rank == 0:
                accuracy, _ = pair_set_accuracy(
                    pl_module.embed, self._load(name), self.image_size, self.batch_size, pl_module.device
                )
            accuracy = float(trainer.strategy.broadcast(accuracy, src=0))
            pl_module.log(f"val/{name}_accuracy", accuracy, sync_dist=True)  # the same value on every rank
