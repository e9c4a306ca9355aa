"""facenas: face AutoML on PyTorch Lightning.

Face detectors (``facenas.models.detection.RetinaFace``), face-identification models
(``facenas.models.recognition.FaceID``), their metrics (``facenas.callbacks``), hyper-parameter
and architecture search (``facenas.search``) and the HyperFD ranker (``facenas.hyperfd``). The
``facenas`` command (``facenas.cli``) trains, evaluates and searches from YAML configs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facenas")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
