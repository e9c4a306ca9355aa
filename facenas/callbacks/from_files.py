"""The metric cores fed from files, as ``facenas eval detections`` and ``facenas
eval fairness`` do: the same functions the training callbacks use, so a number printed by
the CLI and one logged in training cannot disagree."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facenas.core.errors import UserError
from facenas.core.progress import counting
from facenas.datamodules.detection.formats import attach_box_attributes, read_detection, read_wider_predictions
from facenas.datamodules.recognition.formats import read_embedding_table
from facenas.datamodules.records import DataError, DataReport

from .detection_ap import check_iou_threshold, evaluate_detections
from .fairness import MAX_BAD_FRACTION, BadEmbeddingsError, FairnessResult, Singletons, evaluate_fairness


@dataclass
class DetectionFilesResult:
    """AP of a prediction folder (``result``: the JSON-ready dict), the ground-truth reader's
    report, the images that had no prediction file (scored as no detections), and the
    prediction reader's report (files skipped, detections dropped)."""

    result: dict[str, Any]
    report: DataReport
    missing: list[str] = field(default_factory=list)
    predictions: DataReport = field(default_factory=DataReport)


def split_members(split_file: str | Path, split: str) -> set[str]:
    """The keys (image names) a facenas split file assigns to ``split``."""
    path = Path(split_file)
    if not path.is_file():
        raise DataError("split file not found", path)
    try:
        assignments = json.loads(path.read_text())["assignments"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"not a facenas split file ({exc})", path) from None
    members = {k for k, v in assignments.items() if v == split}
    if not members:
        raise DataError(
            f"no image is in split {split!r} (splits: {', '.join(sorted(set(assignments.values())))})", path
        )
    return members


def evaluate_detection_files(
    gt: str | Path,
    pred: str | Path,
    *,
    gt_format: str = "wider",
    images: str | Path | None = None,
    iou: float = 0.5,
    min_size: float = 0.0,
    short_side: float | None = None,
    attributes: str | Path | None = None,
    attribute_columns: list[str] | None = None,
    split_file: str | Path | None = None,
    split: str = "test",
) -> DetectionFilesResult:
    """AP@``iou`` of WIDER-format predictions (``<pred>/<event>/<stem>.txt``) against ground
    truth in any detection format, optionally per attribute group and restricted to the images
    of one split of a split file (``facenas predict`` predicts the test split).

    An image without a prediction file is scored as having no detections; an image whose
    prediction file is unreadable (see :func:`read_wider_predictions`) is left out of the score
    (``skipped_images``) and reported. Ground truth with no image, or no face, to score is a
    :class:`DataError`."""
    check_iou_threshold(iou)
    if short_side is not None and images is None:
        raise DataError("short_side needs the image folder (sizes are read from the image files)")
    with counting("reading ground truth"):
        samples, report = read_detection(gt_format, gt, images, verify="header" if images else "none")
    if split_file is not None:
        members = split_members(split_file, split)
        samples = [s for s in samples if s.name in members]
        if not samples:
            raise DataError(f"no image of the ground truth {gt} is in split {split!r} of this split file", split_file)
    skipped: list[str] = []
    pred_report = DataReport(source=str(pred))
    preds = read_wider_predictions(pred, pred_report, skipped)
    num_images = len(samples)
    if skipped:
        left_out = set(skipped)
        samples = [s for s in samples if Path(s.name).with_suffix("").as_posix() not in left_out]
        if not samples:
            first = next(i for i in pred_report.issues if i.reason.endswith("prediction_file"))
            raise DataError(
                f"every image's prediction file was skipped ({len(skipped)} files), e.g. {first.where()}: "
                f"{first.detail}",
                pred,
            )
    columns = attach_box_attributes(samples, attributes, columns=attribute_columns) if attributes else []
    groups = [
        (col, value)
        for col in columns
        for value in sorted({v for s in samples for v in s.attributes.get(col, []) if v is not None})
    ]
    empty = (np.zeros((0, 4)), np.zeros(0))
    keys = [Path(s.name).with_suffix("").as_posix() for s in samples]
    result = evaluate_detections(
        [tuple(torch.from_numpy(a) for a in preds.get(k, empty)) for k in keys],
        [(torch.from_numpy(s.boxes), torch.from_numpy(s.ignore)) for s in samples],
        image_sizes=[(s.height, s.width) for s in samples] if short_side else None,
        short_side=short_side,
        iou_threshold=iou,
        min_size=min_size,
        attributes=[s.attributes for s in samples],
        groups=groups,
    ).as_dict()
    if result["num_gt"] == 0:
        dropped = f"; the reader dropped or ignored: {dict(report.counts())}" if report.issues else ""
        raise DataError(
            f"no face to score in {len(samples)} images: every ground-truth box is ignored (invalid, difficult, "
            f"crowd{', smaller than min_size' if min_size > 0 else ''}) or there is none{dropped}",
            gt,
        )
    missing = [k for k in keys if k not in preds]
    result.update(
        {
            "num_images": len(samples),
            "images_without_predictions": len(missing),
            "skipped_images": num_images - len(samples),
            "iou": iou,
            "min_size": min_size,
            "short_side": short_side,
            "split": split if split_file is not None else None,
        }
    )
    return DetectionFilesResult(result, report, missing, pred_report)


def resolve_device(device: str) -> str:
    """``auto`` as ``cuda`` when available, else ``cpu``; a device this machine cannot use is a
    :class:`UserError` naming it."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # an unknown device name, or one this machine lacks
        raise UserError(f"device {device!r} cannot be used: {str(exc).splitlines()[0]}") from None
    return device


def evaluate_embedding_files(
    embeddings: str | Path,
    meta: str | Path,
    *,
    identity_column: str = "identity",
    group_column: str = "gender",
    reference_group: str | None = None,
    age_bins: bool = False,
    singletons: Singletons = "skip",
    max_bad_fraction: float = MAX_BAD_FRACTION,
    device: str = "auto",
    progress: bool = False,
) -> FairnessResult:
    """FR-NAS identification error and fairness of saved embeddings (``.npy``, or ``.npz``: see
    :func:`facenas.datamodules.recognition.formats.load_embeddings`) described by a metadata CSV (one
    row per embedding), as ``facenas.callbacks.EmbeddingWriter`` writes them. Rows with a NaN or
    infinite value or all zeros are left out and counted; more than ``max_bad_fraction`` of
    them is a :class:`DataError` naming the embeddings file."""
    table = read_embedding_table(
        embeddings, meta, identity_column=identity_column, group_column=group_column, age_bins=age_bins
    )
    reference = None if reference_group is None else reference_group.lower()
    if reference is not None and reference not in table.group_names:
        raise DataError(f"reference group {reference_group!r} not in {group_column} values {table.group_names}", meta)
    device = resolve_device(device)
    try:
        result = evaluate_fairness(
            torch.from_numpy(table.embeddings).to(device),
            torch.from_numpy(table.identities),
            torch.from_numpy(table.groups),
            table.group_names,
            reference,
            singletons=singletons,
            max_bad_fraction=max_bad_fraction,
            progress=progress,
        )
    except BadEmbeddingsError as exc:
        raise DataError(str(exc), embeddings) from None
    if table.empty_groups:
        result.notes.append(f"{table.empty_groups} rows without a {group_column}: counted overall, in no group")
    if table.out_of_range:
        shown = ", ".join(dict.fromkeys(table.out_of_range[:20]))
        result.notes.append(
            f"{len(table.out_of_range)} {group_column} values in no age bin (1-25, 26-50, 51-75, 76-110), "
            f"e.g. {shown}: counted overall, in no group"
        )
    return result
