"""Training: the one LightningCLI configuration that ``facenas fit``, ``facenas probe`` and every
search trial (in-process, subprocess, Dask) build their trainer, model and data with, and the
configuration it resolves (:mod:`facenas.training.config`) for code that reads it without training."""

from __future__ import annotations

from .cli import FaceNASCLI, find_checkpoint, finish_loggers, print_metrics, run_root
from .config import build_datamodule, config_args, nested, resolved_config

__all__ = [
    "FaceNASCLI",
    "build_datamodule",
    "config_args",
    "find_checkpoint",
    "finish_loggers",
    "nested",
    "print_metrics",
    "resolved_config",
    "run_root",
]
