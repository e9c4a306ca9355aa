"""The searchable Dual Path Network of FR-NAS, and the networks FR-NAS published.

A DPN block's ``1x1 conv -> 3x3 grouped conv -> 1x1 conv`` is replaced by three searchable
operations, each one of nine choices. The nine choices have two numberings:

* the **paper's** (FR-NAS Table 7), used by ``dpn_search_XYZ`` and the ``frnas_joint`` search
  space: code = 3 * kernel index (1x1, 3x3, 5x5) + style (BN first, BN last, no BN);
* the **released code's** (``OP_LIST`` in ``src/search/dpn107.py`` of dooleys/FR-NAS). Every
  published architecture (SMAC_301, SMAC_000, SMAC_010, SMAC_680, MO-ASHA_108, NSGA-II_728, ...)
  was built by that code, so its name is in code numbering.

=====  ====  ===========  ==============================  ========================
paper  code  name         definition                      released class
=====  ====  ===========  ==============================  ========================
0      1     BnConv1x1    BN -> ReLU -> conv 1x1          ``BnActConv2d``, k 1
1      7     Conv1x1Bn    conv 1x1 -> BN -> ReLU          ``ActConv2dBn``, k 1
2      4     Conv1x1      conv 1x1                        ``create_conv2d``, k 1
3      0     BnConv3x3    BN -> ReLU -> conv 3x3          ``BnActConv2d``, k 3
4      6     Conv3x3Bn    conv 3x3 -> BN -> ReLU          ``ActConv2dBn``, k 3
5      3     Conv3x3      conv 3x3                        ``create_conv2d``, k 3
6      2     BnConv5x5    BN -> ReLU -> conv 5x5          ``BnActConv2d``, k 5
7      8     Conv5x5Bn    conv 5x5 -> BN -> ReLU          ``ActConv2dBn``, k 5
8      5     Conv5x5      conv 5x5                        ``create_conv2d``, k 5
=====  ====  ===========  ==============================  ========================

:func:`code_to_paper` and :func:`paper_to_code` translate architectures: the released code's
SMAC_301 is the paper's 530 (``code_to_paper("301") == "530"``). As in the released code (which
builds on timm's DPN), convolutions have no bias and padding ``kernel // 2``, every BN has eps
1e-3 and is followed by ReLU where it has an activation; the middle operation is grouped and
carries the block's stride, the first and last are ungrouped with stride 1. The same three
choices apply to every block, so architecture ``XYZ`` names one of 729 networks.

The macro-architecture is timm's DPN: a stem (conv -> BN -> ReLU, then a 3x3 max-pool), four
stages of dual-path blocks (a residual path of ``bw`` channels and a densely growing path of
``inc`` channels per block), then BN -> ELU and global average pooling. Variants
(:data:`VARIANTS`): ``dpn_search_XYZ`` has DPN-107's width and depth, ``dpn_search_68_XYZ``
DPN-68's, ``dpn_search_small_XYZ`` is a CPU-sized variant, and ``dpn_search_frnas_XYZ`` is the
network FR-NAS searched and trained: DPN-107's width with **one** block per stage, and after
the pooling a 1x1 convolution with bias to a 1000-d embedding (timm's classifier convolution,
which FR-NAS feeds straight into the margin head). Architecture 030 (DPN's own operations) of
the 68 and default variants is timm's ``dpn68`` / ``dpn107``: :func:`dpn_state_dict_from_timm`
loads their weights. (DPN's last activation is ELU, ``fc_act_layer``, as timm 0.6 and FR-NAS's
copy build it; timm 1.0's ``get_norm_act_layer`` keeps the ReLU bound into its norm layer, so
timm 1.0's DPNs end with ReLU.)

The published networks, built as released (:data:`FRNAS_PUBLISHED`; searched hyper-parameters
from the released training scripts):

==================  ======  =====  =====================================================
name                code    paper  searched with (released script)
==================  ======  =====  =====================================================
``frnas_smac_301``  301     530    CosFace, SGD, lr 0.13828 (train_smac_arch_vgg.py)
``frnas_smac_000``  000     333    CosFace, SGD, lr 0.28134 (smac_dpn_trainer.py)
``frnas_smac_010``  010     303    CosFace, SGD, lr 0.32349 (smac_dpn_trainer.py)
``frnas_smac_680``  680     473    CosFace, Adam, lr 6.048e-4 (smac_dpn_trainer.py)
==================  ======  =====  =====================================================

Other published architectures (MO-ASHA_108: paper 037, NSGA-II_728: paper 167) are
``dpn_search_frnas_<code_to_paper(code)>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

OPERATION_NAMES = (  # paper numbering
    "BnConv1x1",
    "Conv1x1Bn",
    "Conv1x1",
    "BnConv3x3",
    "Conv3x3Bn",
    "Conv3x3",
    "BnConv5x5",
    "Conv5x5Bn",
    "Conv5x5",
)
NUM_CHOICES = len(OPERATION_NAMES)
BN_EPS = 1e-3  # timm's DPN and FR-NAS's released DPN

# CODE_TO_PAPER[released code] = paper code; see the table in the module docstring
CODE_TO_PAPER = (3, 0, 6, 5, 2, 8, 4, 1, 7)
PAPER_TO_CODE = tuple(CODE_TO_PAPER.index(paper) for paper in range(NUM_CHOICES))


def _digits(arch: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(arch, str):
        if not re.fullmatch(r"[0-8]{3}", arch):
            raise ValueError(f"architecture must be three digits 0..8, got {arch!r}")
        return tuple(int(ch) for ch in arch)
    codes = tuple(int(c) for c in arch)
    if len(codes) != 3 or not all(0 <= c < NUM_CHOICES for c in codes):
        raise ValueError(f"a DPN architecture is three operation codes in 0..8, got {codes}")
    return codes


def code_to_paper(arch: str | Sequence[int]) -> str:
    """An architecture in the released code's numbering (FR-NAS's ``OP_LIST``, the names of the
    published networks) in the paper's numbering (``dpn_search_XYZ``): ``"301"`` -> ``"530"``."""
    return "".join(str(CODE_TO_PAPER[c]) for c in _digits(arch))


def paper_to_code(arch: str | Sequence[int]) -> str:
    """The inverse of :func:`code_to_paper`: ``"530"`` -> ``"301"``."""
    return "".join(str(PAPER_TO_CODE[c]) for c in _digits(arch))


def searchable_op(
    code: int, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bn_eps: float = BN_EPS
) -> nn.Sequential:
    """Operation ``code`` (0..8, paper numbering): kernel 1/3/5 by ``code // 3``; BN before,
    BN after or none by ``code % 3``."""
    if not 0 <= code < NUM_CHOICES:
        raise ValueError(f"operation code must be 0..8, got {code}")
    kernel = (1, 3, 5)[code // 3]
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    style = code % 3
    if style == 0:
        return nn.Sequential(nn.BatchNorm2d(in_channels, eps=bn_eps), nn.ReLU(inplace=True), conv)
    if style == 1:
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels, eps=bn_eps), nn.ReLU(inplace=True))
    return nn.Sequential(conv)


class BnActConv(nn.Sequential):
    """BN -> ReLU -> conv, DPN's pre-activation convolution (the projection shortcuts)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bn_eps: float = BN_EPS) -> None:
        super().__init__(
            nn.BatchNorm2d(cin, eps=bn_eps),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        )


class SearchableDualPathBlock(nn.Module):
    """A dual-path block whose three operations are chosen by ``codes`` (paper numbering).

    Args:
        in_channels: channels entering the block (residual + dense paths concatenated).
        mid_channels: width of the searchable operations (``r`` in DPN).
        residual_channels: width of the residual path (``bw``).
        increment: channels the dense path grows by (``inc``).
        groups: groups of the middle operation.
        kind: ``proj`` (first block of the first stage), ``down`` (first block of a later
            stage, stride 2) or ``normal``.
        bn_eps: eps of every BN.
    """

    def __init__(
        self,
        codes: Sequence[int],
        in_channels: int,
        mid_channels: int,
        residual_channels: int,
        increment: int,
        groups: int,
        kind: str = "normal",
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        self.residual_channels = residual_channels
        stride = 2 if kind == "down" else 1
        self.projection = (
            BnActConv(in_channels, residual_channels + 2 * increment, 1, stride, bn_eps)
            if kind in ("proj", "down")
            else None
        )
        first, middle, last = codes
        self.op_a = searchable_op(first, in_channels, mid_channels, bn_eps=bn_eps)
        self.op_b = searchable_op(middle, mid_channels, mid_channels, stride, groups, bn_eps)
        self.op_c = searchable_op(last, mid_channels, residual_channels + increment, bn_eps=bn_eps)

    def forward(self, x: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.projection is not None:
            shortcut = self.projection(x_in)
            residual, dense = shortcut[:, : self.residual_channels], shortcut[:, self.residual_channels :]
        else:
            residual, dense = x  # type: ignore[misc]
        out = self.op_c(self.op_b(self.op_a(x_in)))
        return residual + out[:, : self.residual_channels], torch.cat([dense, out[:, self.residual_channels :]], dim=1)


@dataclass(frozen=True)
class DPNConfig:
    """Width and depth of a DPN (timm's names: ``k_r``, ``k_sec``, ``inc_sec``, ...).

    ``embedding_dim``: a 1x1 convolution with bias after the pooling, to this many outputs
    (FR-NAS's network: timm's classifier convolution with 1000 classes); ``None``: none.
    """

    stem_channels: int = 128
    k_r: int = 200
    groups: int = 50
    k_sec: tuple[int, int, int, int] = (4, 8, 20, 3)
    inc_sec: tuple[int, int, int, int] = (20, 64, 64, 128)
    bw_factor: int = 4
    small_stem: bool = False
    stem_pool: bool = True  # timm's DPNs max-pool after the stem (stride 4 into the first stage)
    bn_eps: float = BN_EPS
    embedding_dim: int | None = None


VARIANTS = {
    # DPN-107's width and depth (timm's dpn107)
    "": DPNConfig(),
    # a small variant that trains on a CPU: DPN-68-like depth, narrower, 3x3 stem
    "small": DPNConfig(
        stem_channels=16,
        k_r=64,
        groups=8,
        k_sec=(1, 2, 2, 1),
        inc_sec=(8, 16, 16, 32),
        bw_factor=1,
        small_stem=True,
        stem_pool=False,
    ),
    # DPN-68's width and depth (timm's dpn68)
    "68": DPNConfig(
        stem_channels=10,
        k_r=128,
        groups=32,
        k_sec=(3, 4, 12, 3),
        inc_sec=(16, 32, 32, 64),
        bw_factor=1,
        small_stem=True,
    ),
    # FR-NAS's searched and trained network (src/search/dpn107.py and its training scripts:
    # DPN(op_choices, num_init_features=128, k_r=200, groups=50, k_sec=(1, 1, 1, 1),
    # inc_sec=(20, 64, 64, 128)) with its default 1000-output classifier convolution)
    "frnas": DPNConfig(k_sec=(1, 1, 1, 1), embedding_dim=1000),
}


class SearchableDPN(nn.Module):
    """A DPN whose blocks all use the three operation ``codes`` (paper numbering).

    ``forward`` gives (B, ``num_features``): the pooled features, or with an embedding
    convolution (``config.embedding_dim``) its output; ``feature_channels`` is the width of the
    last feature map (what is pooled).

    Args:
        codes: three operation codes (``(3, 0, 1)`` for architecture 301).
        config: width and depth (:data:`VARIANTS`).
        in_chans: input image channels.
    """

    def __init__(self, codes: Sequence[int], config: DPNConfig = DPNConfig(), in_chans: int = 3) -> None:
        super().__init__()
        codes = _digits(codes)
        self.codes = codes
        self.config = c = config
        kernel = 3 if c.small_stem else 7
        stem = [
            nn.Conv2d(in_chans, c.stem_channels, kernel, stride=2, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c.stem_channels, eps=c.bn_eps),
            nn.ReLU(inplace=True),
        ]
        if c.stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        in_channels = c.stem_channels
        for stage, (count, inc) in enumerate(zip(c.k_sec, c.inc_sec)):
            bw = (64 << stage) * c.bw_factor
            r = (c.k_r * bw) // (64 * c.bw_factor)
            r -= r % c.groups  # the grouped middle operation needs a multiple of the groups
            for i in range(count):
                kind = "normal" if i else ("proj" if stage == 0 else "down")
                blocks.append(SearchableDualPathBlock(codes, in_channels, r, bw, inc, c.groups, kind, c.bn_eps))
                in_channels = bw + 3 * inc if i == 0 else in_channels + inc
        self.blocks = nn.Sequential(*blocks)
        self.feature_channels = in_channels
        # BN -> ELU (timm's and FR-NAS's ``conv5_bn_ac``) -> global average pool -> flatten
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=c.bn_eps), nn.ELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.embedding = None if c.embedding_dim is None else nn.Conv2d(in_channels, c.embedding_dim, 1, bias=True)
        self.num_features = in_channels if c.embedding_dim is None else c.embedding_dim

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after BN + ELU, before pooling (timm's ``forward_features``)."""
        residual, dense = self.blocks(self.stem(x))
        return self.head[:2](torch.cat([residual, dense], dim=1))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool a feature map; then the embedding convolution unless ``pre_logits`` (timm's API)."""
        x = self.head[2](x)
        if self.embedding is not None and not pre_logits:
            x = self.embedding(x)
        return self.head[3](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_NAME = re.compile(r"^dpn_search(?:_(small|68|frnas))?_([0-8])([0-8])([0-8])$")


def parse_dpn_name(name: str) -> tuple[str, tuple[int, int, int]] | None:
    """``dpn_search_301`` -> ("", (3, 0, 1)); ``dpn_search_small_301`` -> ("small", ...); else None."""
    match = _NAME.match(name)
    if match is None:
        return None
    return match.group(1) or "", (int(match.group(2)), int(match.group(3)), int(match.group(4)))


def dpn_search(codes: Sequence[int] | str, variant: str = "", in_chans: int = 3) -> SearchableDPN:
    """Build a searchable DPN from three codes in paper numbering (``(3, 0, 1)`` or ``"301"``)
    and a variant (``""`` DPN-107-like, ``"68"``, ``"small"``, ``"frnas"``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DPN variant {variant!r}; choose from {sorted(VARIANTS)}")
    return SearchableDPN(_digits(codes), VARIANTS[variant], in_chans)


# the networks FR-NAS published, by name -> architecture in the released code's numbering
FRNAS_PUBLISHED = {
    "frnas_smac_301": "301",
    "frnas_smac_000": "000",
    "frnas_smac_010": "010",
    "frnas_smac_680": "680",
}


def frnas_network(name: str, in_chans: int = 3) -> SearchableDPN:
    """A published FR-NAS network as released (``frnas_smac_301``, ...: :data:`FRNAS_PUBLISHED`):
    the ``frnas`` variant with the architecture translated to paper numbering."""
    if name not in FRNAS_PUBLISHED:
        raise ValueError(f"unknown FR-NAS network {name!r}; choose from {', '.join(FRNAS_PUBLISHED)}")
    return dpn_search(code_to_paper(FRNAS_PUBLISHED[name]), "frnas", in_chans)


_TIMM_KEY = re.compile(r"^features\.conv([2-5])_(\d+)\.(c1x1_w_s1|c1x1_w_s2|c1x1_a|c3x3_b|c1x1_c)\.(.+)$")
_TIMM_PART = {
    "c1x1_w_s1": "projection",
    "c1x1_w_s2": "projection",
    "c1x1_a": "op_a",
    "c3x3_b": "op_b",
    "c1x1_c": "op_c",
}


def dpn_state_dict_from_timm(state_dict: Mapping[str, Tensor], model: SearchableDPN) -> dict[str, Tensor]:
    """Rename a state dict in timm's DPN layout to ``model``'s keys.

    timm's DPNs (architecture 030 of the 68 and default variants; ``num_classes=0``) and
    FR-NAS's released ``DPN`` (``dpn_search_frnas_<code_to_paper(op_choices)>``) share that
    layout: ``features.conv1_1`` (stem), ``features.convS_J.{c1x1_w_s1|c1x1_w_s2|c1x1_a|c3x3_b|
    c1x1_c}`` (block J of stage S), ``features.conv5_bn_ac`` and ``classifier`` (the embedding
    convolution). Prefixes of FR-NAS checkpoints (``backbone.``, ``module.``) are removed and
    keys outside the backbone (its margin ``head.``) are dropped; load the result with
    ``model.load_state_dict(...)``, which checks that every key and shape fits.
    """
    starts = [sum(model.config.k_sec[:stage]) for stage in range(4)]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "backbone.")):
            key = key.split(".", 1)[1]
        if key.startswith("features.conv1_1."):
            part, rest = key.removeprefix("features.conv1_1.").split(".", 1)
            out[_rename(model.stem, part, rest, "stem")] = value
        elif key.startswith("features.conv5_bn_ac.bn."):
            out["head.0." + key.removeprefix("features.conv5_bn_ac.bn.")] = value
        elif key.startswith("classifier."):
            out["embedding." + key.removeprefix("classifier.")] = value
        elif (match := _TIMM_KEY.match(key)) is not None:
            stage, index, part, rest = int(match[1]) - 2, int(match[2]) - 1, match[3], match[4]
            block = starts[stage] + index
            name = _TIMM_PART[part]
            op = getattr(model.blocks[block], name)
            if "." not in rest:  # a plain convolution (the released ``create_conv2d`` choices)
                rest = "conv." + rest
            layer, param = rest.split(".", 1)
            out[_rename(op, layer, param, f"blocks.{block}.{name}")] = value
        elif key.startswith("features."):
            raise ValueError(f"unsupported DPN state-dict key {key!r} (DPN-b blocks are not searchable)")
    return out


def _rename(seq: nn.Module, layer: str, param: str, prefix: str) -> str:
    """``prefix.<index of seq's BatchNorm2d (layer "bn") or Conv2d (layer "conv")>.param``."""
    kind = {"bn": nn.BatchNorm2d, "conv": nn.Conv2d}[layer]
    index = next(i for i, m in enumerate(seq) if isinstance(m, kind))
    return f"{prefix}.{index}.{param}"
