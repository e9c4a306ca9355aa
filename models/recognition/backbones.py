"""Identification backbones by name: any timm model (``timm.create_model(name, num_classes=0)``)
or the searchable DPN (``dpn_search_301``, ``dpn_search_small_301``, ``dpn_search_68_301``).
Each returns pooled features (B, ``num_features``)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..detection.backbones import load_local_weights
from .dpn import dpn_search, parse_dpn_name


def create_backbone(name: str, pretrained: str | Path | None = None, in_chans: int = 3) -> nn.Module:
    """Build a feature extractor by name; ``pretrained`` is a local state dict (never downloaded)."""
    parsed = parse_dpn_name(name)
    if parsed is not None:
        variant, codes = parsed
        backbone: nn.Module = dpn_search(codes, variant, in_chans)
    else:
        import timm

        timm_name = name.removeprefix("timm/")
        if not timm.is_model(timm_name):
            raise ValueError(f"unknown backbone {name!r}: neither dpn_search[_small|_68]_XYZ nor a timm model")
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans)
    if pretrained is not None:
        load_local_weights(backbone, pretrained)
    return backbone
