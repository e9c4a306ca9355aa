"""HyperFD (Yan et al., CVPR 2022): the learned ranker's pieces. So far the dataset meta-features:
per-image feature extractors by name, the platform's feature cache, and the client-side summary that
is all a client hands to the platform about its dataset."""

from __future__ import annotations

from .features import (
    EXTRACTORS,
    LABEL_STATS_NAMES,
    ClientSummary,
    DetectorFeatures,
    FeatureExtractor,
    LabelStats,
    TimmFeatures,
    client_summary,
    create_extractor,
    describe_areas,
    extract_features,
    register_extractor,
    summarize,
)

__all__ = [
    "EXTRACTORS",
    "LABEL_STATS_NAMES",
    "ClientSummary",
    "DetectorFeatures",
    "FeatureExtractor",
    "LabelStats",
    "TimmFeatures",
    "client_summary",
    "create_extractor",
    "describe_areas",
    "extract_features",
    "register_extractor",
    "summarize",
]
