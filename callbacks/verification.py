"""Face verification accuracy on insightface pair sets (LFW, CFP-FP, AgeDB-30 ``.bin``)."""

from __future__ import annotations

from pathlib import Path

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


class VerificationAccuracy(Callback):
    """Logs ``val/<name>_accuracy`` (10-fold, best threshold) for each pair set at the end of every
    validation, from the model's ``embed(images)`` (flip-summed, L2-normalised embeddings).

    Args:
        sets: ``{name: path to an insightface .bin}``.
        image_size: side the pair images are resized to (the model's input size).
        batch_size: images per forward pass.
    """

    def __init__(self, sets: dict[str, str], image_size: int = 112, batch_size: int = 64) -> None:
        self.sets = dict(sets)
        self.image_size = image_size
        self.batch_size = batch_size
        self._cache: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

    def _load(self, name: str) -> tuple[torch.Tensor, np.ndarray]:
        if name not in self._cache:
            from datamodules.recognition.datamodule import eval_transform
            from datamodules.recognition.formats import read_verification_bin

            pairs = read_verification_bin(Path(self.sets[name]))
            transform = eval_transform(self.image_size)  # the identification data's evaluation input
            batch = torch.stack([transform(pairs.decode(i)) for i in range(len(pairs.images))])
            self._cache[name] = (batch, pairs.issame)
        return self._cache[name]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name in self.sets:
            images, issame = self._load(name)
            emb = torch.cat(
                [
                    pl_module.embed(images[i : i + self.batch_size].to(pl_module.device)).cpu()
                    for i in range(0, len(images), self.batch_size)
                ]
            )
            distances = (emb[0::2] - emb[1::2]).norm(dim=1).numpy()
            accuracy, _ = verification_accuracy(distances, issame)
            pl_module.log(f"val/{name}_accuracy", accuracy, sync_dist=True)
