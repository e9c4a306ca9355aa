"""Face detection: RetinaFace (backbone, FPN, context modules, heads), anchors, loss, decoding."""

from __future__ import annotations

from .anchors import (
    decode_boxes,
    decode_landmarks,
    encode_boxes,
    encode_landmarks,
    make_anchors,
    match_anchors,
)
from .backbones import BACKBONES, create_backbone, register_backbone
from .loss import MultiBoxLoss
from .retinaface import RetinaFace, RetinaFaceNet, postprocess, to_image_pixels

__all__ = [
    "BACKBONES",
    "MultiBoxLoss",
    "RetinaFace",
    "RetinaFaceNet",
    "create_backbone",
    "decode_boxes",
    "decode_landmarks",
    "encode_boxes",
    "encode_landmarks",
    "make_anchors",
    "match_anchors",
    "postprocess",
    "register_backbone",
    "to_image_pixels",
]
