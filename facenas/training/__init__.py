"""Training: the one LightningCLI configuration that ``facenas fit``, ``facenas probe`` and every
search trial (in-process, subprocess, Dask) build their trainer, model and data with."""

from __future__ import annotations

from .cli import FaceNASCLI, find_checkpoint, finish_loggers, print_metrics, run_root

__all__ = ["FaceNASCLI", "find_checkpoint", "finish_loggers", "print_metrics", "run_root"]
