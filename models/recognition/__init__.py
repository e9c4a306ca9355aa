"""Face identification: timm and searchable-DPN backbones, embedding neck, margin heads, FaceID."""

from __future__ import annotations

from .backbones import create_backbone
from .dpn import (
    FRNAS_PUBLISHED,
    OPERATION_NAMES,
    SearchableDPN,
    code_to_paper,
    dpn_search,
    dpn_state_dict_from_timm,
    frnas_network,
    paper_to_code,
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
    "FRNAS_PUBLISHED",
    "HEADS",
    "OPERATION_NAMES",
    "ArcFace",
    "CosFace",
    "EmbeddingNeck",
    "FaceID",
    "MagFace",
    "SearchableDPN",
    "additive_angular",
    "code_to_paper",
    "create_backbone",
    "create_head",
    "dpn_search",
    "dpn_state_dict_from_timm",
    "focal_loss",
    "frnas_network",
    "paper_to_code",
    "parse_dpn_name",
    "register_head",
    "searchable_op",
]
