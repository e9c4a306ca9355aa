"""Prediction writers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.detection.formats import write_wider_predictions


class WiderPredictionWriter(BasePredictionWriter):
    """Writes each predicted image as WIDER FACE prediction file ``<out>/<event>/<stem>.txt``
    (readable by ``facenas eval-detections``).

    Args:
        output_dir: where to write; default ``<run folder>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if not isinstance(prediction, dict) or "names" not in prediction:
            return
        out = self._target(trainer)
        for name, pred in zip(prediction["names"], prediction["preds"]):
            write_wider_predictions(out, name, pred["boxes"].float().cpu().numpy(), pred["scores"].float().cpu().numpy())

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"facenas: predictions written to {self._target(trainer)}")
