"""``facenas data check`` as a function: read a dataset of any format the way training reads
it and count what was kept, next to the report of what was dropped or repaired."""

from __future__ import annotations

from pathlib import Path

from facenas.core.progress import counting
from facenas.core.registry import UnknownName

from .detection.formats import DETECTION_FORMATS, read_detection
from .recognition.formats import IDENTITY_FORMATS, read_identities
from .records import DataError, DataReport


def dataset_formats() -> list[str]:
    """Every format ``check_dataset`` reads: the detection formats, then the identification ones."""
    return [*DETECTION_FORMATS, *IDENTITY_FORMATS]


def check_dataset(
    format: str, annotations: str | Path | None, images: str | Path | None = None, *, verify: str = "full"
) -> tuple[dict[str, int], DataReport]:
    """Read the dataset and return what was kept (``images``, ``boxes``, ``ignored_boxes`` for
    detection; ``images``, ``identities`` for identification) and the reader's report."""
    if format not in DETECTION_FORMATS and format not in IDENTITY_FORMATS:
        raise UnknownName(f"unknown format {format!r}; choose from {', '.join(dataset_formats())}")
    if annotations is None and format != "folders":
        raise DataError(f"--annotations is required for format {format!r}")
    with counting(f"checking {format} images"):
        if format in DETECTION_FORMATS:
            samples, report = read_detection(format, annotations, images, verify=verify)
            kept = {
                "images": len(samples),
                "boxes": int(sum(len(s) for s in samples)),
                "ignored_boxes": int(sum(s.ignore.sum() for s in samples)),
            }
        else:
            samples, report = read_identities(format, annotations, images, verify=verify)
            kept = {"images": len(samples), "identities": len({s.identity for s in samples})}
    return kept, report
