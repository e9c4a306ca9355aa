"""Identification backbones by name: a registered network (FR-NAS's published
``frnas_smac_301``, ``frnas_smac_000``, ``frnas_smac_010``, ``frnas_smac_680``: names in the
released code's operation numbering), a registered family (the searchable DPNs
``dpn_search_XYZ``, ``dpn_search_small_XYZ``, ``dpn_search_68_XYZ``, ``dpn_search_frnas_XYZ``:
family name, then the three operation codes in the paper's numbering) or any timm model
(``timm.create_model(name, num_classes=0)``). Each returns (B, ``num_features``): pooled
features, or for the FR-NAS networks their 1000-d embedding."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from torch import nn

from facenas.core.registry import Registry
from facenas.core.weights import load_local_weights

from .dpn import FRNAS_PUBLISHED, dpn_search, frnas_network

# family name -> factory(architecture code, in_chans)
BACKBONE_FAMILIES: Registry[Callable[[str, int], nn.Module]] = Registry("identification backbone family")
for _variant in ("", "small", "68", "frnas"):
    BACKBONE_FAMILIES.register(
        "_".join(filter(None, ("dpn_search", _variant))),
        lambda code, in_chans, variant=_variant: dpn_search(code, variant, in_chans),
    )

# single networks by exact name -> factory(in_chans)
BACKBONES: Registry[Callable[[int], nn.Module]] = Registry("identification backbone")
for _name in FRNAS_PUBLISHED:
    BACKBONES.register(_name, lambda in_chans, name=_name: frnas_network(name, in_chans))

_FAMILY_NAME = re.compile(r"^(?P<family>.+)_(?P<code>[0-8]{3})$")


def create_backbone(name: str, pretrained: str | Path | None = None, in_chans: int = 3) -> nn.Module:
    """Build a feature extractor by name; ``pretrained`` is a local state dict (never downloaded)."""
    match = _FAMILY_NAME.match(name)
    if name in BACKBONES:
        backbone: nn.Module = BACKBONES.get(name)(in_chans)
    elif match is not None and match["family"] in BACKBONE_FAMILIES:
        backbone = BACKBONE_FAMILIES.get(match["family"])(match["code"], in_chans)
    else:
        import timm

        timm_name = name.removeprefix("timm/")
        if not timm.is_model(timm_name):
            known = ", ".join([*BACKBONES.names(), *(f"{f}_XYZ" for f in BACKBONE_FAMILIES)])
            raise ValueError(f"unknown backbone {name!r}: neither one of {known} (XYZ in 0..8) nor a timm model")
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans)
    if pretrained is not None:
        load_local_weights(backbone, pretrained)
    return backbone


def is_backbone(name: str) -> bool:
    """Whether :func:`create_backbone` knows ``name`` (without building it)."""
    match = _FAMILY_NAME.match(name)
    if name in BACKBONES or (match is not None and match["family"] in BACKBONE_FAMILIES):
        return True
    import timm

    return timm.is_model(name.removeprefix("timm/"))
