"""Prediction writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from facenas.datamodules.detection.datamodule import load_image
from facenas.datamodules.detection.formats import write_wider_predictions


class WiderPredictionWriter(BasePredictionWriter):
    """Writes each predicted image as WIDER FACE prediction file ``<out>/<event>/<stem>.txt``
    (readable by ``facenas eval detections``).

    Args:
        output_dir: where to write; default ``<run folder>/predictions``.
        draw_threshold: also save a copy of each image, ``<out>/<event>/<stem>.jpg``, with the
            detections scoring at least this drawn on it (None: no drawings).
    """

    def __init__(self, output_dir: str | None = None, draw_threshold: float | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.draw_threshold = draw_threshold
        self.counts = {"images": 0, "faces": 0}

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict) or "names" not in prediction:
            return
        out = self._target(trainer)
        metas = batch["meta"] if isinstance(batch, dict) else [{}] * len(prediction["names"])
        for name, pred, meta in zip(prediction["names"], prediction["preds"], metas):
            boxes, scores = pred["boxes"].float().cpu(), pred["scores"].float().cpu()
            target = write_wider_predictions(out, name, boxes.numpy(), scores.numpy())
            self.counts["images"] += 1
            if self.draw_threshold is not None and "path" in meta:
                sure = scores >= self.draw_threshold
                self.counts["faces"] += int(sure.sum())
                self._draw(meta["path"], boxes[sure], target.with_suffix(".jpg"))

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counts = {"images": 0, "faces": 0}

    @staticmethod
    def _draw(image_path: str, boxes: Any, target: Path) -> None:
        from PIL import Image
        from torchvision.utils import draw_bounding_boxes

        image = load_image(image_path)
        width = max(2, round(max(image.shape[-2:]) / 300))
        drawn = draw_bounding_boxes(image, boxes, colors="lime", width=width)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target, quality=90)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            drawn = (
                f", {self.counts['faces']} faces scoring >= {self.draw_threshold} drawn on copies"
                if self.draw_threshold is not None
                else ""
            )
            print(f"facenas: predictions for {self.counts['images']} images written to {self._target(trainer)}{drawn}")


class EmbeddingWriter(BasePredictionWriter):
    """Writes the evaluation embeddings of every predicted image to ``<out>/embeddings.npy``
    (N, D) and one row per embedding to ``<out>/meta.csv`` (``image``, ``identity`` and the
    data's group column, e.g. ``gender``): the inputs of ``facenas eval fairness``.

    Under DDP each rank writes its own pair, ``embeddings.rank<r>.npy`` / ``meta.rank<r>.csv``.

    Args:
        output_dir: where to write; default ``<run folder>/embeddings``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "embeddings"

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        import csv

        import numpy as np
        import torch

        batches = [
            p
            for p in (predictions[0] if predictions and isinstance(predictions[0], list) else predictions)
            if isinstance(p, dict) and "embeddings" in p
        ]
        if not batches:
            return
        data = trainer.datamodule
        column = getattr(getattr(data, "hparams", None), "group_column", None) or "group"
        names = list(getattr(data, "group_names", []) or [])
        out = self._target(trainer)
        out.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        embeddings = torch.cat([b["embeddings"].float().cpu() for b in batches]).numpy()
        np.save(out / f"embeddings{suffix}.npy", embeddings)
        with open(out / f"meta{suffix}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "identity", column])
            for b in batches:
                paths = b.get("paths") or [""] * len(b["embeddings"])
                ids = b.get("identity_names") or [str(int(i)) for i in b["identities"]]
                for path, identity, group in zip(paths, ids, b["groups"].tolist()):
                    writer.writerow([path, identity, names[group] if 0 <= group < len(names) else ""])
        print(
            f"facenas: {len(embeddings)} embeddings written to {out / f'embeddings{suffix}.npy'} "
            f"(rows described in {out / f'meta{suffix}.csv'})"
        )
