"""What the task data modules share: train/val/test/predict loaders over named splits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .records import DataError


class SplitDataModule(pl.LightningDataModule):
    """A data module whose ``splits`` hold train / val / test samples; subclasses build a
    split's dataset (``_dataset``) and collate function (``_collate``). Predictions run on the
    ``predict`` split where the data module has one, else on the test split. Hyper-parameters
    ``batch_size``, ``eval_batch_size`` and ``num_workers`` size the loaders."""

    splits: dict[str, list[Any]]

    # the splits each stage runs on
    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}

    def _require_splits(self, stage: Any) -> None:
        """An empty split that ``stage`` runs on is one clear error (Lightning would silently
        skip validation or test on it); validation is not needed when the trainer disables it."""
        stage = str(getattr(stage, "value", stage) or "")
        needed = list(self.STAGE_SPLITS.get(stage, ()))
        if stage == "predict" and "predict" in self.splits:
            needed = ["predict"]
        if stage == "fit" and self.trainer is not None and self.trainer.limit_val_batches == 0:
            needed.remove("val")
        for part in needed:
            if part in self.splits and not self.splits[part]:
                raise DataError(f"the {part} split is empty: {self._why_empty(part)}; `facenas {stage}` needs it")

    def _why_empty(self, part: str) -> str:
        """Why ``part`` may have come out empty, for the error message."""
        return "no sample of the data falls in it"

    def _synthetic_folder(self, *settings: Any) -> Path:
        """The cache folder of the synthetic data these settings generate, under
        ``synthetic_root``: one folder per distinct setting, reused by later runs."""
        key = json.dumps(list(settings))
        return Path(self.hparams.synthetic_root) / hashlib.sha1(key.encode()).hexdigest()[:10]

    def _dataset(self, part: str, train: bool) -> Dataset:
        raise NotImplementedError

    def _collate(self, train: bool) -> Callable | None:
        return None

    def _loader(self, part: str, train: bool) -> DataLoader:
        h = self.hparams
        if part not in self.splits:
            raise ValueError(
                f"unknown split {part!r}; the splits are {', '.join(self.splits) or 'not set up yet (call setup)'}"
            )
        size = len(self.splits[part])
        return DataLoader(
            self._dataset(part, train),
            batch_size=h.batch_size if train else h.eval_batch_size,
            shuffle=train,
            drop_last=train and size > h.batch_size,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
            collate_fn=self._collate(train),
            pin_memory=torch.cuda.is_available(),
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Any split (``train``, ``val``, ``test``) in order with the evaluation transform, e.g.
        to extract features of the training images."""
        return self._loader(split, False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if "predict" in self.splits else "test", False)
