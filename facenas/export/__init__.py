"""Export trained models to other runtimes: a RetinaFace detector to ONNX (run by ONNX Runtime)
or TorchScript, with or without its decode + NMS post-processing, and a FaceID backbone + neck to
ONNX; :class:`OnnxDetectorSession` runs an exported detector with ONNX Runtime.

ONNX and ONNX Runtime come with the ``export`` extra (``pip install "facenas[export]"``).
"""

from __future__ import annotations

from .detector import (
    HPARAMS_KEY,
    OnnxDetectorSession,
    detector_hparams,
    export_detector,
    load_torchscript,
)
from .recognition import OnnxEmbedderSession, export_embedder

__all__ = [
    "HPARAMS_KEY",
    "OnnxDetectorSession",
    "OnnxEmbedderSession",
    "detector_hparams",
    "export_detector",
    "export_embedder",
    "load_torchscript",
]
