"""Run trained models on your own images from Python: :class:`FaceDetector` (faces, scores and 5
landmarks in the image's pixels) and :class:`FaceEmbedder` (L2-normalised embeddings of face
crops). They own loading, resizing, normalisation, batching and the device, with the same
transforms as the data modules, so that they give what ``facenas predict`` writes."""

from __future__ import annotations

from .detector import Detections, FaceDetector
from .embedder import FaceEmbedder

__all__ = ["Detections", "FaceDetector", "FaceEmbedder"]
