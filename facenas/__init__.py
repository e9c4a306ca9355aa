"""facenas: face AutoML on PyTorch Lightning.

Face detectors (``facenas.models.detection.RetinaFace``), face-identification models
(``facenas.models.recognition.FaceID``), their metrics (``facenas.callbacks``), hyper-parameter
and architecture search (``facenas.search``) and the HyperFD ranker (``facenas.hyperfd``). The
``facenas`` command (``facenas.cli``) trains, evaluates and searches from YAML configs.

Run a trained model on your own images with :class:`facenas.FaceDetector` and
:class:`facenas.FaceEmbedder` (``facenas.inference``; imported on first use, so that
``import facenas`` stays light).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facenas")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["Detections", "FaceDetector", "FaceEmbedder", "__version__"]

_INFERENCE = {"Detections", "FaceDetector", "FaceEmbedder"}


def __getattr__(name: str):
    if name in _INFERENCE:
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
