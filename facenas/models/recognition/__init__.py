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
from .mitigation import MITIGATIONS, Angular, Flipped, Mitigation, SensitiveNets, create_mitigation

__all__ = [
    "FRNAS_PUBLISHED",
    "HEADS",
    "MITIGATIONS",
    "OPERATION_NAMES",
    "Angular",
    "ArcFace",
    "CosFace",
    "EmbeddingNeck",
    "FaceID",
    "Flipped",
    "MagFace",
    "Mitigation",
    "SearchableDPN",
    "SensitiveNets",
    "additive_angular",
    "code_to_paper",
    "create_backbone",
    "create_head",
    "create_mitigation",
    "dpn_search",
    "dpn_state_dict_from_timm",
    "focal_loss",
    "frnas_network",
    "paper_to_code",
    "parse_dpn_name",
    "register_head",
    "searchable_op",
]
