"""The metric cores as torchmetrics Metrics: states that synchronise across DDP ranks, fed by
the Lightning callbacks during validation and test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from .detection_ap import (
    average_precision,
    flatten_per_image,
    group_ignores,
    image_scales,
    match_detections,
)
from .fairness import MAX_BAD_FRACTION, FairnessResult, ProbeRanks, Singletons, evaluate_fairness, fairness_metrics


def ap_disparity(groups: Sequence[tuple[float, int]], min_group_faces: int) -> float:
    """The largest absolute AP difference between two groups, given as ``(ap, counted faces)``,
    over the groups with at least ``min_group_faces`` faces and a defined AP (NaN when fewer than
    two are so measured: a gap between a handful of faces is noise, and a group without a counted
    face has no AP)."""
    aps = [ap for ap, faces in groups if faces >= max(min_group_faces, 1) and not math.isnan(ap)]
    return max(aps) - min(aps) if len(aps) >= 2 else math.nan


class DetectionAveragePrecision(Metric):
    """AP@IoU (MMDetection VOC semantics) as a torchmetrics Metric, optionally per attribute group.

    ``update`` matches each batch at once and keeps only the counted detections' scores and TP
    flags, so states are small and concatenate across DDP ranks. ``compute`` returns
    ``{"ap50": ..., "recall": ..., "num_gt": ..., "<attr>=<value>": ap, "num_gt:<attr>=<value>": faces,
    ...}``; an AP without a counted face (a group nobody is labelled with) is NaN, never 0.0.

    Per-group AP (e.g. ``attributes={"gender": ["female", "male"]}``) treats ground truths outside
    the group, or without a label, as ignore regions, as WIDER's easy/medium/hard subsets do.
    Per attribute, ``"disparity:<attr>"`` is the largest absolute AP difference between two of its
    groups, over the groups with at least ``min_group_faces`` counted faces (NaN when fewer than
    two groups have that many: a gap between a handful of faces is noise).
    """

    full_state_update = False

    def __init__(
        self,
        iou_threshold: float = 0.5,
        min_size: float = 0.0,
        short_side: float | None = None,
        attributes: dict[str, list[str]] | None = None,
        min_group_faces: int = 20,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.min_group_faces = min_group_faces
        self.iou_threshold = iou_threshold
        self.min_size = min_size
        self.short_side = short_side
        self.groups = [(k, v) for k, values in (attributes or {}).items() for v in values]
        for key in [""] + [f"{k}={v}" for k, v in self.groups]:
            self.add_state(f"scores{key}", default=[], dist_reduce_fx="cat")
            self.add_state(f"tp{key}", default=[], dist_reduce_fx="cat")
            self.add_state(f"num_gt{key}", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[dict], targets: Sequence[dict]) -> None:
        """Add a batch.

        Args:
            preds: per image ``{"boxes": (D, 4) xyxy, "scores": (D,)}``.
            targets: per image ``{"boxes": (G, 4) xyxy, "ignore": (G,) bool (optional),
                "image_size": (h, w) (needed with short_side), "attributes": {name: [label per box]}}``.
        """
        pairs = [(p["boxes"], p["scores"]) for p in preds]
        gts = [(t["boxes"], t.get("ignore", torch.zeros(len(t["boxes"]), dtype=torch.bool))) for t in targets]
        det_boxes, det_scores, det_image, gt_boxes, gt_image, gt_ignore = (
            x.to(self.device) for x in flatten_per_image(pairs, gts)
        )
        sizes = (
            [tuple(torch.as_tensor(t["image_size"]).tolist()) for t in targets] if self.short_side is not None else None
        )
        scale = image_scales(sizes, self.short_side, len(targets))
        counts = [len(t["boxes"]) for t in targets]
        for key, ignore in group_ignores(gt_ignore, [t.get("attributes") for t in targets], counts, self.groups):
            result = match_detections(
                det_boxes,
                det_scores,
                det_image,
                gt_boxes,
                gt_image,
                ignore,
                image_scale=scale,
                iou_threshold=self.iou_threshold,
                min_size=self.min_size,
            )
            getattr(self, f"scores{key}").append(result.scores.float())
            getattr(self, f"tp{key}").append(result.tp)
            setattr(self, f"num_gt{key}", getattr(self, f"num_gt{key}") + result.num_gt)

    def _ap(self, key: str) -> tuple[float, float, int]:
        scores, tp = getattr(self, f"scores{key}"), getattr(self, f"tp{key}")
        scores = (
            torch.cat(scores)
            if isinstance(scores, list) and scores
            else (scores if isinstance(scores, Tensor) else torch.zeros(0))
        )
        tp = (
            torch.cat(tp)
            if isinstance(tp, list) and tp
            else (tp if isinstance(tp, Tensor) else torch.zeros(0, dtype=torch.bool))
        )
        num_gt = int(getattr(self, f"num_gt{key}").item())
        ap, recall = average_precision(scores, tp.bool(), num_gt)
        return ap, recall, num_gt

    def compute(self) -> dict[str, Tensor]:
        ap, recall, num_gt = self._ap("")
        out = {"ap50": torch.tensor(ap), "recall": torch.tensor(recall), "num_gt": torch.tensor(float(num_gt))}
        per_attribute: dict[str, list[tuple[float, int]]] = {name: [] for name, _ in self.groups}
        for name, value in self.groups:
            group_ap, _, group_gt = self._ap(f"{name}={value}")
            out[f"{name}={value}"] = torch.tensor(group_ap)
            out[f"num_gt:{name}={value}"] = torch.tensor(float(group_gt))
            per_attribute[name].append((group_ap, group_gt))
        for name, groups in per_attribute.items():
            out[f"disparity:{name}"] = torch.tensor(ap_disparity(groups, self.min_group_faces))
        return out


class IdentificationFairness(Metric):
    """FR-NAS error and fairness metrics as a torchmetrics Metric.

    States are the embeddings, identities and group indices (concatenated across DDP ranks);
    ``compute`` runs the chunked core and returns ``error``, ``accuracy``, ``rank``,
    ``rank_by_identity``, ``disparity``, ``ratio``, ``rank_disparity``, ``rank_ratio``,
    ``rank_disparity_id``, ``rank_ratio_id``, ``error_ratio``, ``probes``, ``singletons``,
    ``nonfinite_rows``, ``zero_rows``, ``bad_embeddings`` (their sum: rows left out) and per
    group ``<metric>_<group>`` for accuracy, error, rank, rank_by_identity, n. ``singletons``:
    ``"skip"`` or ``"error"`` (FR-NAS's code; see :mod:`facenas.callbacks.fairness`). More than
    ``max_bad_fraction`` unusable rows raise :class:`facenas.callbacks.fairness.BadEmbeddingsError`.
    """

    full_state_update = False

    def __init__(
        self,
        group_names: Sequence[str] | None = None,
        reference_group: str | None = None,
        singletons: Singletons = "skip",
        max_bad_fraction: float = MAX_BAD_FRACTION,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.group_names = list(group_names) if group_names is not None else None
        self.reference_group = reference_group
        self.singletons = singletons
        self.max_bad_fraction = max_bad_fraction
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("identities", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, identities: Tensor, groups: Tensor | None = None) -> None:
        """Add a batch: embeddings (B, D), identities (B,) int, groups (B,) int (-1: none)."""
        self.embeddings.append(embeddings.detach().float())
        self.identities.append(identities.detach().long().reshape(-1))
        if groups is None:
            groups = torch.full((len(identities),), -1, dtype=torch.long, device=identities.device)
        self.groups.append(groups.detach().long().reshape(-1))

    def compute_result(self) -> FairnessResult:
        """The full :class:`FairnessResult` (``compute`` returns its flat dict of tensors)."""

        def cat(x) -> Tensor:
            return torch.cat(x) if isinstance(x, list) else x

        if isinstance(self.embeddings, list) and not self.embeddings:
            return fairness_metrics(
                ProbeRanks(torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0)),
                torch.zeros(0, dtype=torch.long),
                self.group_names,
                self.reference_group,
            )
        return evaluate_fairness(
            cat(self.embeddings),
            cat(self.identities),
            cat(self.groups),
            self.group_names,
            self.reference_group,
            singletons=self.singletons,
            max_bad_fraction=self.max_bad_fraction,
        )

    def compute(self) -> dict[str, Tensor]:
        result = self.compute_result()
        out = {k: torch.tensor(float(v)) for k, v in result.as_dict().items() if isinstance(v, (int, float))}
        for group, stats in result.groups.items():
            for key, value in vars(stats).items():
                out[f"{key}_{group}"] = torch.tensor(float(value))
        return out
