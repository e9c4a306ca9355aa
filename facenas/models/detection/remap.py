"""Parameter remapping between architectures of the NAS space (FNA's rules, Fang et al. ICLR
2020, as ``remap_for_paramadapt`` of JaminFong/FNA ``fna_det/tools/apis/param_remap.py`` does
it; ../shared/design/HYPERFD.md section 6.3).

* **Depth**: a target layer the seed has takes the seed's layer of the same index (a shallower
  stage takes the seed stage's first layers); a layer beyond the seed stage's depth takes the
  seed stage's last layer.
* **Width**: every conv weight takes the seed's leading output and input channels; a 1-D
  tensor (BN weight, bias, running statistics) its leading entries. Entries beyond the seed's
  size are zero in conv weights and keep their initial value in 1-D tensors (BN: weight 1,
  bias 0, mean 0, variance 1), so a wider target computes what the seed computes.
* **Kernel**: the centre of the seed kernel (a larger target kernel gets the seed kernel
  centred in zeros).

Width and kernel are remapped at once. Tensors outside the backbone (FPN, context modules,
heads: their shapes do not depend on the architecture) are copied as they are.

No library does this (timm and torchvision load only equal shapes), hence the hand-written rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from .proxyless import ProxylessArch, ProxylessBackbone

_LAYER_KEY = re.compile(r"^stages\.stage(\d)\.(\d+)\.(.*)$")


def backbone_prefix(state: Mapping[str, Tensor]) -> str:
    """The prefix of a ProxylessNAS backbone's keys in a state dict (``""`` for a backbone's
    own, ``backbone.`` for a RetinaFaceNet's, ``net.backbone.`` in a training checkpoint)."""
    stem = "stem.0.weight"
    for key in state:
        prefix = key[: -len(stem)]
        if key.endswith(stem) and f"{prefix}stages.stage1.0.depthwise.0.weight" in state:
            return prefix
    raise ValueError(
        "the state dict has no ProxylessNAS backbone (no <prefix>stem.0.weight with stages.stage1 beside it)"
    )


def adapt(seed: Tensor, target: Tensor) -> Tensor:
    """``seed`` fitted into ``target``'s shape by the width and kernel rules: leading channels of
    the first two dimensions, centred crop or zero padding of the spatial ones. ``target`` gives
    the shape and, for 1-D tensors, the values beyond the seed's length."""
    if seed.ndim == 0:
        return seed.clone()
    if seed.ndim != target.ndim:
        raise ValueError(f"cannot remap a {seed.ndim}-d tensor onto a {target.ndim}-d one")
    out = target.clone() if seed.ndim == 1 else torch.zeros_like(target)
    src, dst = seed, out
    for dim in range(seed.ndim):
        n = min(seed.shape[dim], target.shape[dim])
        # channels (dims 0, 1) keep their leading entries; spatial dims (2, 3) are centred
        src_start = (seed.shape[dim] - n) // 2 if dim >= 2 else 0
        dst_start = (target.shape[dim] - n) // 2 if dim >= 2 else 0
        src, dst = src.narrow(dim, src_start, n), dst.narrow(dim, dst_start, n)
    dst.copy_(src.to(dst.dtype))
    return out


def remap(
    seed_state: Mapping[str, Tensor],
    seed_arch: str | ProxylessArch,
    target_arch: str | ProxylessArch,
) -> dict[str, Tensor]:
    """The state dict of ``target_arch`` made from ``seed_state`` (a state dict of a backbone of
    ``seed_arch``, or of a detector or training checkpoint that contains one, keys with any
    prefix) by the depth, width and kernel rules of this module. Keys outside the backbone are
    copied as they are."""
    seed_arch = ProxylessArch.parse(seed_arch)
    prefix = backbone_prefix(seed_state)
    found = ProxylessArch.from_state_dict(dict(seed_state), prefix)
    if found != seed_arch:
        raise ValueError(f"the seed state dict holds architecture {found}, not the seed architecture {seed_arch}")
    return _remap(seed_state, prefix, seed_arch.depths, target_arch)


def _remap(
    seed_state: Mapping[str, Tensor], prefix: str, seed_depths: tuple[int, ...], target_arch: str | ProxylessArch
) -> dict[str, Tensor]:
    depths = dict(zip(range(2, 8), seed_depths))
    out = {
        k: v.clone()
        for k, v in seed_state.items()
        if not (k.startswith(f"{prefix}stem.") or k.startswith(f"{prefix}stages."))
    }
    for key, initial in ProxylessBackbone(target_arch).state_dict().items():
        source = key
        if f"{prefix}{key}" not in seed_state:
            match = _LAYER_KEY.match(key)
            if match is None:  # every non-layer key is shared by all architectures
                raise KeyError(f"seed state dict lacks {prefix}{key}")
            stage, rest = int(match[1]), match[3]
            source = f"stages.stage{stage}.{depths[stage] - 1}.{rest}"
        out[f"{prefix}{key}"] = adapt(seed_state[f"{prefix}{source}"], initial)
    return out


# torchvision MobileNetV2's blocks (``features.<i>``) as layers of the NAS space: index -> (stage, layer)
_MNV2_LAYERS = {1: (1, 0)} | {
    i: (stage, layer)
    for stage, first, depth in ((2, 2, 2), (3, 4, 3), (4, 7, 4), (5, 11, 3), (6, 14, 3), (7, 17, 1))
    for layer, i in enumerate(range(first, first + depth))
}
MOBILENET_V2_DEPTHS = (2, 3, 4, 3, 3, 1)  # MobileNetV2 is d2-3-4-3-3-1 of the space, every layer e6k3


def remap_mobilenet_v2(state: Mapping[str, Tensor], target_arch: str | ProxylessArch) -> dict[str, Tensor]:
    """A MobileNetV2 detector's state dict (``mobilenet_v2_<width>`` backbone, keys
    ``[net.]backbone.stages.<s>.<i>.conv...``) remapped onto an architecture of the space by the
    same rules. MobileNetV2 is the architecture ``d2-3-4-3-3-1`` with every layer e6k3, except that
    torchvision rounds the x0.5 widths to multiples of 8 (stage 2 has 16 channels where the space
    has 12): those layers take the leading channels, as any narrower target does. This is the
    "start from the shipped WIDER-pretrained MobileNetV2 detector where layers coincide" of
    HyperFD's largest network."""
    pattern = re.compile(r"^(?P<prefix>.*backbone\.)stages\.\d\.(?P<index>\d+)\.(?P<rest>.*)$")
    renamed: dict[str, Tensor] = {}
    prefix = None
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            renamed[key] = value
            continue
        prefix = match["prefix"]
        index, rest = int(match["index"]), match["rest"]
        if index == 0:
            renamed[f"{prefix}stem.{rest}"] = value
            continue
        if index not in _MNV2_LAYERS:
            raise ValueError(f"{key}: not a layer of a MobileNetV2 detector's backbone")
        stage, layer = _MNV2_LAYERS[index]
        parts = ("expand", "depthwise", "project.0", "project.1")[1 if index == 1 else 0 :]
        conv, _, tail = rest.removeprefix("conv.").partition(".")
        renamed[f"{prefix}stages.stage{stage}.{layer}.{parts[int(conv)]}.{tail}"] = value
    if prefix is None:
        raise ValueError("no MobileNetV2 backbone tensors (backbone.stages.<s>.<i>.conv...) in this state dict")
    return _remap(renamed, prefix, MOBILENET_V2_DEPTHS, target_arch)
