"""Face identification: timm and searchable-DPN backbones, embedding neck, margin heads, FaceID."""

from __future__ import annotations

from .backbones import create_backbone
from .dpn import (
    OPERATION_NAMES,
    SearchableDPN,
    dpn_search,
    parse_dpn_name,
    searchable_op,
)
from .faceid import EmbeddingNeck, FaceID
from .heads import (
    HEADS,
    ArcFace,
    CosFace,
    MagFace,
    additive_angular,
    create_head,
    focal_loss,
    register_head,
)

__all__ = [
    "HEADS",
    "OPERATION_NAMES",
    "ArcFace",
    "CosFace",
    "EmbeddingNeck",
    "FaceID",
    "MagFace",
    "SearchableDPN",
    "additive_angular",
    "create_backbone",
    "create_head",
    "dpn_search",
    "focal_loss",
    "parse_dpn_name",
    "register_head",
    "searchable_op",
]
