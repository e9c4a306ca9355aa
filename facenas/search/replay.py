"""Tabular replay on the FR-NAS study's published results: every evaluation is a lookup in
``analysis_vgg_val_phase1.csv`` (355 trained configurations, objectives Error and Rank
Disparity), so backends can be compared in seconds instead of GPU-days.

Diverged runs (Error 1.0) are real outcomes and are returned as such; the all-NaN row and
configurations the study never trained come back as failed trials.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .trial import Result, Status, Trial

HEADS = ("ArcFace", "CosFace", "MagFace")
OBJECTIVES = ({"metric": "Error", "mode": "min"}, {"metric": "Rank Disparity", "mode": "min"})


class FRNASTable:
    """The phase-1 table as an objective over the ``frnas_phase1`` space
    (backbone, head, optimizer in {SGD, AdamW}, schedule in {default, cosine})."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(2, "FR-NAS result table not found", str(self.path))
        self.rows: dict[tuple[str, str, str, str], dict[str, float]] = {}
        with open(self.path, newline="") as f:
            for row in csv.DictReader(f):
                key = self.parse(row["index"])
                if key is None or key in self.rows:
                    continue
                self.rows[key] = {
                    k: float(v) if v not in ("", None) else math.nan
                    for k, v in row.items()
                    if k not in ("index", "epoch")
                }

    @staticmethod
    def parse(index: str) -> tuple[str, str, str, str] | None:
        """``<model>_<Head>_<Optimizer>[_<lr>_<schedule>]`` -> (model, head, optimizer, schedule);
        None for optimizers outside the space (the study's per-model defaults: Adam, RMSProp)."""
        for head in HEADS:
            marker = f"_{head}_"
            if marker in index:
                model, rest = index.split(marker, 1)
                parts = rest.split("_")
                optimizer = {"sgd": "SGD", "adamw": "AdamW"}.get(parts[0].lower())
                if optimizer is None:
                    return None
                schedule = "cosine" if len(parts) > 1 and parts[-1] == "cosine" else "default"
                return model, head, optimizer, schedule
        return None

    def worst_rank_disparity(self) -> float:
        return max(v["Rank Disparity"] for v in self.rows.values() if math.isfinite(v["Rank Disparity"]))

    def __call__(self, trial: Trial) -> Result:
        c = trial.config
        key = (c["backbone"], c["head"], c["optimizer"], c["schedule"])
        row = self.rows.get(key)
        if row is None:
            return Result(Status.FAILED, error="configuration not trained in the FR-NAS study")
        if not math.isfinite(row["Error"]):
            return Result(Status.FAILED, error="the study recorded no metrics for this run (NaN row)")
        return Result(Status.SUCCESS, {k: v for k, v in row.items() if math.isfinite(v)})
