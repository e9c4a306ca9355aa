"""The two sample records every reader produces, and the report that counts what readers drop."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facenas.core.errors import UserError


class DataError(UserError, ValueError):
    """A data problem a user must fix (missing file, malformed structure); names the culprit."""

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None) -> None:
        where = (
            f"{file}:{line}: " if file is not None and line is not None else (f"{file}: " if file is not None else "")
        )
        super().__init__(f"{where}{message}")
        self.file = None if file is None else str(file)
        self.line = line


@dataclass
class DetectionSample:
    """One image of a detection dataset.

    Attributes:
        image: path of the image file.
        name: the image's name relative to the images root (WIDER writes predictions by it).
        boxes: (N, 4) float32, xyxy in pixels.
        ignore: (N,) bool; True for boxes that are neither required nor penalised (WIDER invalid,
            VOC difficult, COCO crowd).
        landmarks: (N, 5, 2) float32 or None; rows of faces without landmarks are NaN.
            Order: left eye, right eye, nose, left mouth corner, right mouth corner.
        attributes: per-box labels, e.g. ``{"gender": ["female", None, "male"]}``.
        width, height: image size in pixels when known.
        lines: (N,) int, the source line (or record index) of each box, for reports.
        source_index: (N,) int, each box's 0-based position in its image's list in the source
            file (before any box was dropped), the key of per-face side files such as
            WIDER's demographics CSV.
    """

    image: str
    name: str
    boxes: np.ndarray
    ignore: np.ndarray
    landmarks: np.ndarray | None = None
    attributes: dict[str, list[str | None]] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    lines: np.ndarray | None = None
    source_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2)

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> DetectionSample:
        """A copy holding only the boxes where ``keep`` (bool or index array) selects."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=int)
        return DetectionSample(
            image=self.image,
            name=self.name,
            boxes=self.boxes[idx],
            ignore=self.ignore[idx],
            landmarks=None if self.landmarks is None else self.landmarks[idx],
            attributes={k: [v[i] for i in idx] for k, v in self.attributes.items()},
            width=self.width,
            height=self.height,
            lines=None if self.lines is None else self.lines[idx],
            source_index=None if self.source_index is None else self.source_index[idx],
        )


@dataclass
class IdentitySample:
    """One image of an identification dataset.

    Attributes:
        image: path of the image file.
        identity: the identity label (a string, whatever the source uses).
        attributes: group labels such as ``{"gender": "female", "age_bin": "26-50"}``.
        bbox: optional face box (x1, y1, x2, y2) in pixels for cropping.
        landmarks: optional (5, 2) landmarks in pixels.
    """

    image: str
    identity: str
    attributes: dict[str, str | None] = field(default_factory=dict)
    bbox: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None


@dataclass
class Issue:
    """One thing a reader dropped, clipped or skipped."""

    file: str
    line: int | None
    reason: str
    detail: str = ""
    bad: bool = True  # False for repairs (clipping) that keep the box

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class DataReport:
    """Counts and lists every box or image a reader dropped or repaired.

    ``bad_fraction`` is the share of dropped items (boxes and images) among all items read.
    """

    source: str = ""
    images_read: int = 0
    boxes_read: int = 0
    issues: list[Issue] = field(default_factory=list)

    def add(self, file: str | Path, line: int | None, reason: str, detail: str = "", bad: bool = True) -> None:
        self.issues.append(Issue(str(file), line, reason, detail, bad))

    def counts(self) -> Counter[str]:
        """Number of issues per reason."""
        return Counter(i.reason for i in self.issues)

    @property
    def num_bad(self) -> int:
        return sum(i.bad for i in self.issues)

    @property
    def bad_fraction(self) -> float:
        total = self.images_read + self.boxes_read
        return self.num_bad / total if total else 0.0

    def merge(self, other: DataReport) -> DataReport:
        self.images_read += other.images_read
        self.boxes_read += other.boxes_read
        self.issues.extend(other.issues)
        return self

    def summary(self) -> str:
        """A short human-readable summary (one line per reason)."""
        lines = [
            f"{self.source or 'data'}: {self.images_read} images, {self.boxes_read} boxes read; "
            f"{self.num_bad} dropped ({100 * self.bad_fraction:.2f}%), "
            f"{len(self.issues) - self.num_bad} repaired"
        ]
        for reason, n in sorted(self.counts().items()):
            first = next(i for i in self.issues if i.reason == reason)
            lines.append(f"  {reason}: {n} (first at {first.where()}{': ' + first.detail if first.detail else ''})")
        return "\n".join(lines)
