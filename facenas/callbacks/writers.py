"""Prediction writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from facenas.datamodules.detection.datamodule import load_image
from facenas.datamodules.detection.formats import face_records, write_wider_predictions


class WiderPredictionWriter(BasePredictionWriter):
    """Writes what ``facenas predict`` finds in each image, under ``<out>`` (default
    ``<run folder>/predictions``):

    * ``<event>/<stem>.txt``: the WIDER FACE prediction file (every candidate the model keeps,
      down to its ``conf_threshold``), which ``facenas eval detections`` reads. Not written for
      the frames of a video.
    * ``detections.jsonl``: one JSON line per image (or video frame) with the faces scoring at
      least ``score_threshold``: ``{"image": name, "width", "height", "faces": [{"box": [x1, y1,
      x2, y2], "score", "landmarks": [[x, y] x 5]}]}``, plus ``"frame"`` and ``"time"``
      (seconds) for a video's frames.
    * with ``draw_threshold``, a copy of each image under its own name, extension included
      (``<out>/<event>/<name>``: ``x.jpg`` and ``x.png`` both survive), with the faces scoring at
      least that drawn: boxes and their 5 landmarks; for a video, the annotated video under
      the video's name.

    Args:
        output_dir: where to write; default ``<run folder>/predictions``.
        score_threshold: the lowest score written to ``detections.jsonl`` (None: no file).
        draw_threshold: the lowest score drawn on the copies (None: no copies).
    """

    def __init__(
        self, output_dir: str | None = None, draw_threshold: float | None = None, score_threshold: float | None = 0.5
    ) -> None:
        super().__init__(write_interval="batch")
        for name, value in (("draw_threshold", draw_threshold), ("score_threshold", score_threshold)):
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] or null, got {value}")
        self.output_dir = output_dir
        self.draw_threshold = draw_threshold
        self.score_threshold = score_threshold
        self.counts = {"images": 0, "frames": 0, "faces": 0}
        self._videos: dict[str, Any] = {}
        self._jsonl: Any = None

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def _lines(self, trainer: pl.Trainer) -> Any:
        if self._jsonl is None:
            out = self._target(trainer)
            out.mkdir(parents=True, exist_ok=True)
            suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
            self._jsonl = open(out / f"detections{suffix}.jsonl", "w", encoding="utf-8")
        return self._jsonl

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
            marks = pred["landmarks"].float().cpu() if "landmarks" in pred else None
            video = "frame" in meta
            if not video:
                write_wider_predictions(out, name, boxes.numpy(), scores.numpy())
            self.counts["frames" if video else "images"] += 1
            if self.score_threshold is not None:
                self._write_line(trainer, name, meta, boxes, scores, marks)
            if self.draw_threshold is None or not ("path" in meta or video):
                continue
            sure = scores >= self.draw_threshold
            self.counts["faces"] += int(sure.sum())
            sure_marks = marks[sure] if marks is not None else None
            if video:
                image = torch.from_numpy(meta["pixels"]).permute(2, 0, 1)
                self._video(out / name, meta["path"]).write(_drawn(image, boxes[sure], sure_marks))
            else:
                drawn = _drawn(load_image(meta["path"]), boxes[sure], sure_marks)
                _save(drawn, out / name)

    def _write_line(self, trainer: pl.Trainer, name: str, meta: dict, boxes: Any, scores: Any, marks: Any) -> None:
        sure = scores >= self.score_threshold
        height, width = meta.get("image_size", (None, None))
        line: dict[str, Any] = {"image": name}
        if "frame" in meta:
            line.update({"frame": meta["frame"], "time": meta.get("time")})
        line.update({"width": width, "height": height})
        line["faces"] = face_records(
            boxes[sure].numpy(), scores[sure].numpy(), marks[sure].numpy() if marks is not None else None
        )
        self._lines(trainer).write(json.dumps(line) + "\n")

    def _video(self, target: Path, source: str) -> Any:
        from facenas.datamodules.video import VideoWriter, video_info

        if str(target) not in self._videos:
            self._videos[str(target)] = VideoWriter(target, video_info(source).rate)
        return self._videos[str(target)]

    def _close(self) -> None:
        for writer in self._videos.values():
            writer.close()
        self._videos = {}
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counts = {"images": 0, "frames": 0, "faces": 0}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        videos = list(self._videos)
        self._close()
        if trainer.is_global_zero:
            what = [f"{self.counts['images']} images"] if self.counts["images"] or not videos else []
            if videos:
                what.append(f"{self.counts['frames']} frames of {len(videos)} video{'s' if len(videos) > 1 else ''}")
            drawn = (
                f", {self.counts['faces']} faces scoring >= {self.draw_threshold} drawn on copies"
                if self.draw_threshold is not None
                else ""
            )
            listed = (
                f"; faces scoring >= {self.score_threshold} in detections.jsonl"
                if self.score_threshold is not None
                else ""
            )
            print(f"facenas: predictions for {' and '.join(what)} written to {self._target(trainer)}{drawn}{listed}")


def _drawn(image: torch.Tensor, boxes: torch.Tensor, landmarks: torch.Tensor | None) -> np.ndarray:
    """A uint8 RGB (3, H, W) image with ``boxes`` drawn in green and each face's 5 landmarks as
    dots (eyes blue, nose yellow, mouth corners red), as an HxWx3 array."""
    from torchvision.utils import draw_bounding_boxes, draw_keypoints

    side = max(image.shape[-2:])
    width = max(2, round(side / 300))
    drawn = draw_bounding_boxes(image, boxes, colors="lime", width=width) if len(boxes) else image
    if landmarks is not None and len(landmarks) and torch.isfinite(landmarks).all():
        for points, colour in (([0, 1], "blue"), ([2], "yellow"), ([3, 4], "red")):
            drawn = draw_keypoints(drawn, landmarks[:, points], colors=colour, radius=max(2, round(side / 250)))
    return drawn.permute(1, 2, 0).numpy()


def _save(pixels: np.ndarray, target: Path) -> None:
    """Save an RGB array in the format of ``target``'s extension (JPEG and WebP at quality 90)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    lossy = target.suffix.lower() in (".jpg", ".jpeg", ".webp")
    Image.fromarray(pixels).save(target, **({"quality": 90} if lossy else {}))


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
