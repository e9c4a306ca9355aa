"""Lightning callbacks that feed the metric cores during validation and test and log the results.

A LightningModule opts in by returning, from ``validation_step`` / ``test_step``, a dict with:

* detection: ``"preds"`` (per image ``{"boxes": (D, 4) xyxy, "scores": (D,)}``) and ``"targets"``
  (per image ``{"boxes": (G, 4), "ignore": (G,), "image_size": (h, w), "attributes": {...}}``),
  boxes in the same pixel frame (the original image's);
* identification: ``"embeddings"`` (B, D), ``"identities"`` (B,) int, ``"groups"`` (B,) int
  (index into ``group_names``; -1 when unknown).

States are torchmetrics states, so the logged values are computed over all DDP ranks' data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from .fairness import MAX_BAD_FRACTION, BadEmbeddingsError, Singletons
from .metrics import DetectionAveragePrecision, IdentificationFairness

_STAGES = {"validate": "val", "test": "test"}


class MetricCallback(Callback):
    """Base of the evaluation callbacks (the CLI keeps a best checkpoint when one is configured):
    one metric per stage, reset at epoch start, updated per batch, computed,
    synchronised and logged as ``<stage>/<key>`` at epoch end."""

    def _make_metric(self) -> Any:
        raise NotImplementedError

    def _update(self, metric: Any, outputs: dict) -> None:
        raise NotImplementedError

    def _wants(self, outputs: Any) -> bool:
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._metrics = {prefix: self._make_metric() for prefix in _STAGES.values()}

    def _start(self, pl_module: pl.LightningModule, prefix: str) -> None:
        self._metrics[prefix] = self._metrics[prefix].to(pl_module.device)
        self._metrics[prefix].reset()

    def _batch(self, outputs: Any, prefix: str) -> None:
        if self._wants(outputs):
            self._update(self._metrics[prefix], outputs)

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        metric = self._metrics[prefix]
        if not metric.update_called:
            return
        values = metric.compute()  # synchronises the states of all ranks: every rank holds the result
        # sync_dist averages identical values (a no-op) and keeps Lightning from warning about DDP
        pl_module.log_dict({f"{prefix}/{k}": v.float() for k, v in self._select(values).items()}, sync_dist=True)
        self._report(values, trainer, prefix)

    def _select(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return values

    def _report(self, values: dict[str, torch.Tensor], trainer: pl.Trainer, prefix: str) -> None:
        """Warn about what the metric left out (after logging its values)."""

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module, "val")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(outputs, "val")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module, "test")

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(outputs, "test")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "test")


class DetectionAP(MetricCallback):
    """Logs ``val/ap50`` and ``test/ap50`` (MMDetection VOC semantics; see
    :mod:`facenas.callbacks.detection_ap`), plus ``<stage>/ap50_<attr>_<value>`` per attribute group and
    ``<stage>/ap50_disparity_<attr>``: the largest absolute AP difference between two groups of
    the attribute that have at least ``min_group_faces`` counted faces (NaN with fewer than two
    such groups). Any of them can be a search objective. A group without a counted face (no
    attribute file, or nobody labelled with it) has no AP: NaN, with one warning per stage naming
    it; a search reads a NaN objective as a failed trial.

    Args:
        iou_threshold: IoU of a true positive.
        min_size: ground truths smaller than this (``sqrt(w * h)``, after scaling) are ignored;
            HyperFD uses 36.
        short_side: measure sizes after scaling each image so its shorter side is this long
            (HyperFD: 720); None measures them in original pixels.
        attributes: per-box attribute groups to report AP for, e.g. ``{"gender": ["female", "male"]}``.
        min_group_faces: groups with fewer counted faces are left out of the disparity.
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        min_size: float = 36.0,
        short_side: float | None = 720.0,
        attributes: dict[str, list[str]] | None = None,
        min_group_faces: int = 20,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.min_size = min_size
        self.short_side = short_side
        self.attributes = attributes
        self.min_group_faces = min_group_faces
        self._warned: set[tuple[str, str]] = set()  # (stage, group) whose undefined AP was reported

    def _make_metric(self) -> DetectionAveragePrecision:
        return DetectionAveragePrecision(
            iou_threshold=self.iou_threshold,
            min_size=self.min_size,
            short_side=self.short_side,
            attributes=self.attributes,
            min_group_faces=self.min_group_faces,
        )

    def _wants(self, outputs: Any) -> bool:
        return isinstance(outputs, dict) and "preds" in outputs and "targets" in outputs

    def _update(self, metric: DetectionAveragePrecision, outputs: dict) -> None:
        metric.update(outputs["preds"], outputs["targets"])

    def _select(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"ap50": values["ap50"], "recall": values["recall"]}
        out.update({"ap50_" + k.replace("=", "_"): v for k, v in values.items() if "=" in k and ":" not in k})
        out.update({"ap50_disparity_" + k.split(":", 1)[1]: v for k, v in values.items() if k.startswith("disparity:")})
        return out

    def _report(self, values: dict[str, torch.Tensor], trainer: pl.Trainer, prefix: str) -> None:
        empty = [k.split(":", 1)[1] for k, v in values.items() if k.startswith("num_gt:") and int(v) == 0]
        if int(values["num_gt"]) == 0:
            empty.insert(0, "")
        for key in empty:
            if (prefix, key) in self._warned:
                continue
            self._warned.add((prefix, key))
            if key:
                name = f"{prefix}/ap50_{key.replace('=', '_')}"
                why = f"no counted {prefix} face has {key} (is there an attribute file with that label?)"
            else:
                name, why = f"{prefix}/ap50", f"no counted {prefix} face at all"
            rank_zero_warn(f"{name} is NaN: {why}; an undefined AP is never a best value nor part of a gap")


class FairnessMetrics(MetricCallback):
    """Logs FR-NAS identification error and fairness each validation and test:
    ``<stage>/error``, ``accuracy``, ``rank``, ``rank_by_identity``, ``disparity``, ``ratio``,
    ``rank_disparity``, ``rank_ratio`` (rank: images of other identities closer than the nearest
    mate, FR-NAS's paper text), ``rank_disparity_id``, ``rank_ratio_id`` (rank by identity:
    FR-NAS's released code and published numbers), ``error_ratio``, ``probes``, ``singletons``,
    ``bad_embeddings`` (rows left out: ``nonfinite_rows`` with a NaN or infinite value,
    ``zero_rows`` all zeros; with a warning) and per group ``<metric>_<group>``; any of them can
    be a search objective. More than ``max_bad_fraction`` unusable rows stop the run with a
    ``FloatingPointError`` naming the stage and epoch (``facenas fit``: one line, exit code 1).
    A fairness metric that is undefined (fewer than two groups among the probes, or no probe) is
    NaN, never 0.0, with one warning per stage saying why.

    Args:
        group_names: names of the group indices the model returns; default: the datamodule's
            ``group_names`` attribute, else ``"0"``, ``"1"``, ...
        reference_group: the group others are compared with (FR-NAS: ``female``); None: the
            maximum over all ordered pairs of groups.
        singletons: images whose identity has no other image: ``"skip"`` them, or count them as
            errors with rank -1 (``"error"``: FR-NAS's code).
        max_bad_fraction: embedding rows with a NaN or infinite value or all zeros are left out
            of probes and gallery; above this fraction of them the run stops.
    """

    def __init__(
        self,
        group_names: Sequence[str] | None = None,
        reference_group: str | None = None,
        singletons: Singletons = "skip",
        max_bad_fraction: float = MAX_BAD_FRACTION,
    ) -> None:
        self.group_names = list(group_names) if group_names is not None else None
        self.reference_group = reference_group
        self.singletons = singletons
        self.max_bad_fraction = max_bad_fraction
        self._warned: set[str] = set()  # stages whose undefined fairness metrics were reported

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.group_names is None:
            names = getattr(trainer.datamodule, "group_names", None) if trainer.datamodule is not None else None
            self.group_names = list(names) if names is not None else None
        super().setup(trainer, pl_module, stage)

    def _make_metric(self) -> IdentificationFairness:
        return IdentificationFairness(
            group_names=self.group_names,
            reference_group=self.reference_group,
            singletons=self.singletons,
            max_bad_fraction=self.max_bad_fraction,
        )

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        try:
            super()._end(trainer, pl_module, prefix)
        except BadEmbeddingsError as exc:  # a diverged model: a failed training, not a user error
            raise FloatingPointError(f"{prefix} embeddings at epoch {trainer.current_epoch}: {exc}") from None

    def _report(self, values: dict[str, torch.Tensor], trainer: pl.Trainer, prefix: str) -> None:
        if torch.isnan(values["disparity"]) and prefix not in self._warned:
            self._warned.add(prefix)
            why = (
                "no probe (every identity has a single image)"
                if int(values["probes"]) == 0
                else "fewer than two groups among the probes, or none in the reference group"
            )
            rank_zero_warn(f"{prefix}/disparity and the other fairness metrics are NaN: {why}")
        bad = int(values["bad_embeddings"])
        if bad:
            rank_zero_warn(
                f"{prefix} epoch {trainer.current_epoch}: {bad} embedding rows left out of the fairness metrics "
                f"({int(values['nonfinite_rows'])} with a NaN or infinite value, {int(values['zero_rows'])} all "
                f"zeros; logged as {prefix}/bad_embeddings)"
            )

    def _wants(self, outputs: Any) -> bool:
        return isinstance(outputs, dict) and "embeddings" in outputs and "identities" in outputs

    def _update(self, metric: IdentificationFairness, outputs: dict) -> None:
        metric.update(outputs["embeddings"], outputs["identities"], outputs.get("groups"))
