"""Metric math (pure functions and torchmetrics Metrics) and the Lightning callbacks that log it.

Names are imported on first use, so that the command-line tools that need only the pure metric
cores do not pay for importing Lightning and torchmetrics.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DetectionResult": "detection_ap",
    "average_precision": "detection_ap",
    "evaluate_detections": "detection_ap",
    "match_detections": "detection_ap",
    "BadEmbeddingsError": "fairness",
    "FairnessResult": "fairness",
    "GroupStats": "fairness",
    "evaluate_fairness": "fairness",
    "fairness_metrics": "fairness",
    "identification_ranks": "fairness",
    "DetectionAveragePrecision": "metrics",
    "IdentificationFairness": "metrics",
    "DetectionAP": "evaluation",
    "FairnessMetrics": "evaluation",
    "WandbLogger": "loggers",
    "WiderPredictionWriter": "writers",
    "EmbeddingWriter": "writers",
    "MetricCallback": "evaluation",
    "VerificationAccuracy": "verification",
    "ProbeResult": "probes",
    "probe_layers": "probes",
    "extract_layers": "probes",
    "evaluate_detection_files": "from_files",
    "evaluate_embedding_files": "from_files",
    "group_ignores": "detection_ap",
    "verification_accuracy": "verification",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
