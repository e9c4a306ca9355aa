"""LightningDataModules, dataset formats, splits and synthetic data.

Every reader produces one record type per task (:class:`DetectionSample`,
:class:`IdentitySample`) and a :class:`DataReport` of what it dropped or repaired.
"""

from __future__ import annotations

from .records import DataError, DataReport, DetectionSample, IdentitySample
from .splits import load_or_create_split, make_split, split_detection, split_identities

__all__ = [
    "DataError",
    "DataReport",
    "DetectionSample",
    "IdentitySample",
    "load_or_create_split",
    "make_split",
    "split_detection",
    "split_identities",
]
