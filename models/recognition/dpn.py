"""The searchable Dual Path Network of FR-NAS.

A DPN block's ``1x1 conv -> 3x3 grouped conv -> 1x1 conv`` is replaced by three searchable
operations, each one of nine choices (FR-NAS Table 7):

=====  ===========  ==========================================
code   name         definition
=====  ===========  ==========================================
0      BnConv1x1    BN -> ReLU -> conv 1x1
1      Conv1x1Bn    conv 1x1 -> BN -> ReLU
2      Conv1x1      conv 1x1
3      BnConv3x3    BN -> ReLU -> conv 3x3
4      Conv3x3Bn    conv 3x3 -> BN -> ReLU
5      Conv3x3      conv 3x3
6      BnConv5x5    BN -> ReLU -> conv 5x5
7      Conv5x5Bn    conv 5x5 -> BN -> ReLU
8      Conv5x5      conv 5x5
=====  ===========  ==========================================

The middle operation keeps the block's grouping and stride; the first and last sit at the 1x1
positions and are ungrouped. The same three choices apply to every block, so architecture
``XYZ`` (e.g. ``301``) names one of 729 networks. The macro-architecture follows timm's DPN:
a stem, four stages of dual-path blocks (a residual path of ``bw`` channels and a densely
growing path of ``inc`` channels per block), then BN + ReLU and global average pooling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

OPERATION_NAMES = (
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


def searchable_op(code: int, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Operation ``code`` (0..8): kernel 1/3/5 by ``code // 3``; BN before, BN after or none by ``code % 3``."""
    if not 0 <= code < NUM_CHOICES:
        raise ValueError(f"operation code must be 0..8, got {code}")
    kernel = (1, 3, 5)[code // 3]
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    style = code % 3
    if style == 0:
        return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), conv)
    if style == 1:
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    return nn.Sequential(conv)


class BnActConv(nn.Sequential):
    """BN -> ReLU -> conv, DPN's pre-activation convolution (the projection shortcuts)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        )


class SearchableDualPathBlock(nn.Module):
    """A dual-path block whose three operations are chosen by ``codes``.

    Args:
        in_channels: channels entering the block (residual + dense paths concatenated).
        mid_channels: width of the searchable operations (``r`` in DPN).
        residual_channels: width of the residual path (``bw``).
        increment: channels the dense path grows by (``inc``).
        groups: groups of the middle operation.
        kind: ``proj`` (first block of the first stage), ``down`` (first block of a later
            stage, stride 2) or ``normal``.
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
    ) -> None:
        super().__init__()
        self.residual_channels = residual_channels
        stride = 2 if kind == "down" else 1
        self.projection = (
            BnActConv(in_channels, residual_channels + 2 * increment, 1, stride) if kind in ("proj", "down") else None
        )
        first, middle, last = codes
        self.op_a = searchable_op(first, in_channels, mid_channels)
        self.op_b = searchable_op(middle, mid_channels, mid_channels, stride=stride, groups=groups)
        self.op_c = searchable_op(last, mid_channels, residual_channels + increment)

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
    """Width and depth of a DPN (timm's names: ``k_r``, ``k_sec``, ``inc_sec``, ...)."""

    stem_channels: int = 128
    k_r: int = 200
    groups: int = 50
    k_sec: tuple[int, int, int, int] = (4, 8, 20, 3)
    inc_sec: tuple[int, int, int, int] = (20, 64, 64, 128)
    bw_factor: int = 4
    small_stem: bool = False
    stem_pool: bool = True  # timm's DPNs max-pool after the stem (stride 4 into the first stage)


VARIANTS = {
    # DPN-107's width and depth (FR-NAS searches blocks in this macro-architecture)
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
    # DPN-68's width and depth
    "68": DPNConfig(
        stem_channels=10,
        k_r=128,
        groups=32,
        k_sec=(3, 4, 12, 3),
        inc_sec=(16, 32, 32, 64),
        bw_factor=1,
        small_stem=True,
    ),
}


class SearchableDPN(nn.Module):
    """A DPN whose blocks all use the three operation ``codes``; outputs pooled features
    (``num_features`` channels).

    Args:
        codes: three operation codes (``(3, 0, 1)`` for architecture 301).
        config: width and depth (:data:`VARIANTS`).
        in_chans: input image channels.
    """

    def __init__(self, codes: Sequence[int], config: DPNConfig = DPNConfig(), in_chans: int = 3) -> None:
        super().__init__()
        codes = tuple(int(c) for c in codes)
        if len(codes) != 3 or not all(0 <= c < NUM_CHOICES for c in codes):
            raise ValueError(f"a DPN architecture is three operation codes in 0..8, got {codes}")
        self.codes = codes
        c = config
        kernel = 3 if c.small_stem else 7
        stem = [
            nn.Conv2d(in_chans, c.stem_channels, kernel, stride=2, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c.stem_channels),
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
                blocks.append(SearchableDualPathBlock(codes, in_channels, r, bw, inc, c.groups, kind))
                in_channels = bw + 3 * inc if i == 0 else in_channels + inc
        self.blocks = nn.Sequential(*blocks)
        self.num_features = in_channels
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after BN + ReLU, before pooling (timm's ``forward_features``)."""
        residual, dense = self.blocks(self.stem(x))
        return self.head[:2](torch.cat([residual, dense], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head[2:](self.forward_features(x))


_NAME = re.compile(r"^dpn_search(?:_(small|68))?_([0-8])([0-8])([0-8])$")


def parse_dpn_name(name: str) -> tuple[str, tuple[int, int, int]] | None:
    """``dpn_search_301`` -> ("", (3, 0, 1)); ``dpn_search_small_301`` -> ("small", ...); else None."""
    match = _NAME.match(name)
    if match is None:
        return None
    return match.group(1) or "", (int(match.group(2)), int(match.group(3)), int(match.group(4)))


def dpn_search(codes: Sequence[int] | str, variant: str = "", in_chans: int = 3) -> SearchableDPN:
    """Build a searchable DPN from three codes (``(3, 0, 1)`` or ``"301"``) and a variant
    (``""`` DPN-107-like, ``"68"``, ``"small"``)."""
    if isinstance(codes, str):
        if not re.fullmatch(r"[0-8]{3}", codes):
            raise ValueError(f"architecture must be three digits 0..8, got {codes!r}")
        codes = tuple(int(ch) for ch in codes)
    if variant not in VARIANTS:
        raise ValueError(f"unknown DPN variant {variant!r}; choose from {sorted(VARIANTS)}")
    return SearchableDPN(codes, VARIANTS[variant], in_chans)
