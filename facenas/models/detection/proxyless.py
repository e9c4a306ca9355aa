"""HyperFD's detection NAS space: a ProxylessNAS-style MobileNetV2 x0.5 backbone built from an
architecture record (supplementary Table 3; ../shared/design/HYPERFD.md section 6.2).

======  ======  =============  ============  =====  ======
stage   depth   expand         kernel        width  stride
======  ======  =============  ============  =====  ======
stem    1       -              3 (conv)      16     2
1       1       1              3             8      1
2       1-3     {4, 6}         {3, 5, 7}     12     2
3       1-3     {4, 6}         {3, 5, 7}     16     2
4       2-4     {4, 6}         {3, 5, 7}     32     2
5       3-4     {4, 6}         {3, 5, 7}     48     1
6       2-4     {4, 6}         {3, 5, 7}     80     2
7       1       {4, 6}         {3, 5, 7}     160    1
======  ======  =============  ============  =====  ======

Every layer of stages 2-7 is an MBConv (1x1 expand -> kxk depthwise -> 1x1 project, BN after
each, ReLU6 after the first two) with its own expand ratio and kernel; the first layer of a
stage carries the stride; a layer is residual when its stride is 1 and its widths match. The
detector takes the ends of stages 3, 5 and 7 (strides 8, 16, 32; 16, 48 and 160 channels).

An architecture's canonical string lists the depths of stages 2-7, then each stage's layers::

    d3-3-4-4-4-1:e6k7,e6k7,e6k7/e6k7,e6k7,e6k7/e6k7,e6k7,e6k7,e6k7/.../e6k7

(``e<expand>k<kernel>``; ``,`` between the layers of a stage, ``/`` between stages). As a
detector backbone: ``proxyless_x05:<string>``, or ``proxyless_x05:largest`` (every stage at its
maximum depth, expand 6, kernel 7).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

if TYPE_CHECKING:
    from torch_geometric.data import Data

STEM_WIDTH = 16
STAGE1_WIDTH = 8
WIDTHS = (12, 16, 32, 48, 80, 160)  # stages 2-7: MobileNetV2 x0.5 without rounding to multiples of 8
STRIDES = (2, 2, 2, 1, 2, 1)
DEPTHS = ((1, 2, 3), (1, 2, 3), (2, 3, 4), (3, 4), (2, 3, 4), (1,))
EXPANDS = (4, 6)
KERNELS = (3, 5, 7)
STAGES = tuple(range(2, 8))  # the searchable stages, by their paper numbers
FEATURE_STAGES = (3, 5, 7)  # their ends feed the detector (strides 8, 16, 32)
OPS = tuple(f"e{e}k{k}" for k in KERNELS for e in EXPANDS)  # k3e4, k3e6, k5e4, ... as in AceNAS

_LAYER = re.compile(r"e(\d+)k(\d+)")


@dataclass(frozen=True)
class Layer:
    """One MBConv layer's choices."""

    expand: int
    kernel: int

    def __str__(self) -> str:
        return f"e{self.expand}k{self.kernel}"


@dataclass(frozen=True)
class ProxylessArch:
    """An architecture of the space: the layers of stages 2-7 (one tuple per stage, its length
    the stage's depth). ``str()`` gives the canonical form and :meth:`parse` reads it back."""

    stages: tuple[tuple[Layer, ...], ...]

    def __post_init__(self) -> None:
        if len(self.stages) != len(STAGES):
            raise ValueError(f"an architecture has {len(STAGES)} searchable stages (2-7), got {len(self.stages)}")
        for stage, layers, depths in zip(STAGES, self.stages, DEPTHS):
            if len(layers) not in depths:
                allowed = ", ".join(map(str, depths))
                raise ValueError(f"stage {stage} has depth {len(layers)}; the space allows {allowed}")
            for layer in layers:
                if layer.expand not in EXPANDS or layer.kernel not in KERNELS:
                    raise ValueError(
                        f"stage {stage}: layer {layer} is outside the space (expand {EXPANDS}, kernel {KERNELS})"
                    )

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(layers) for layers in self.stages)

    def __str__(self) -> str:
        depths = "-".join(map(str, self.depths))
        return f"d{depths}:" + "/".join(",".join(map(str, layers)) for layers in self.stages)

    @classmethod
    def parse(cls, text: str | ProxylessArch) -> ProxylessArch:
        """The canonical string (or ``largest`` / ``smallest``) as a record; a malformed string
        is a ValueError that shows the expected form."""
        if isinstance(text, ProxylessArch):
            return text
        text = str(text).strip()
        if text == "largest":
            return cls.uniform(max(EXPANDS), max(KERNELS), [max(d) for d in DEPTHS])
        if text == "smallest":
            return cls.uniform(min(EXPANDS), min(KERNELS), [min(d) for d in DEPTHS])
        form = "d<6 depths joined by ->:<layers e<expand>k<kernel>, ',' within a stage, '/' between stages>"
        head, sep, body = text.partition(":")
        if not sep or not head.startswith("d"):
            raise ValueError(f"architecture {text!r} is not of the form {form}")
        try:
            depths = [int(d) for d in head[1:].split("-")]
        except ValueError:
            raise ValueError(f"architecture {text!r}: depths {head!r} are not integers ({form})") from None
        groups = body.split("/")
        if len(groups) != len(depths):
            raise ValueError(f"architecture {text!r}: {len(depths)} depths but {len(groups)} stages of layers")
        stages = []
        for stage, depth, group in zip(STAGES, depths, groups):
            layers = []
            for token in group.split(","):
                match = _LAYER.fullmatch(token.strip())
                if match is None:
                    raise ValueError(f"architecture {text!r}: stage {stage} layer {token!r} is not e<expand>k<kernel>")
                layers.append(Layer(int(match[1]), int(match[2])))
            if len(layers) != depth:
                raise ValueError(f"architecture {text!r}: stage {stage} has depth {depth} but {len(layers)} layers")
            stages.append(tuple(layers))
        return cls(tuple(stages))

    @classmethod
    def uniform(cls, expand: int, kernel: int, depths: list[int] | tuple[int, ...]) -> ProxylessArch:
        """Every layer the same choice."""
        return cls(tuple(tuple(Layer(expand, kernel) for _ in range(d)) for d in depths))

    def layers(self) -> list[tuple[int, int, Layer]]:
        """``(stage, index in stage, layer)`` of every layer of stages 2-7, in order."""
        return [(s, i, layer) for s, layers in zip(STAGES, self.stages) for i, layer in enumerate(layers)]

    def cost(self, image_size: int | tuple[int, int] = 640) -> dict[str, int]:
        """Parameters and multiply-adds of the backbone (convolutions and BN affine parameters;
        FLOPs counted as multiply-adds, the ProxylessNAS / MobileNetV2 convention) for one
        image of ``image_size`` (an int is a square), computed without building the network."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        params = macs = 0

        def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
            nonlocal params, macs, h, w
            pad = (kernel - 1) // 2
            h, w = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
            weights = cout * (cin // groups) * kernel * kernel
            params += weights + 2 * cout  # + BN weight and bias
            macs += weights * h * w

        def mbconv(cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
            hidden = cin * expand
            if expand != 1:
                conv(cin, hidden, 1)
            conv(hidden, hidden, kernel, stride, groups=hidden)
            conv(hidden, cout, 1)

        conv(3, STEM_WIDTH, 3, 2)
        mbconv(STEM_WIDTH, STAGE1_WIDTH, 1, 3, 1)
        cin = STAGE1_WIDTH
        for width, stride, layers in zip(WIDTHS, STRIDES, self.stages):
            for i, layer in enumerate(layers):
                mbconv(cin, width, layer.expand, layer.kernel, stride if i == 0 else 1)
                cin = width
        return {"params": params, "flops": macs}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "") -> ProxylessArch:
        """The architecture whose :class:`ProxylessBackbone` has these tensors (keys under
        ``prefix``): depths from the layers present, expand from the hidden width, kernel from
        the depthwise weight."""
        stages = []
        for stage, width in zip(STAGES, WIDTHS):
            layers = []
            for i in itertools.count():
                key = f"{prefix}stages.stage{stage}.{i}.depthwise.0.weight"
                if key not in state:
                    break
                hidden, _, kernel, _ = state[key].shape
                cin = STAGE1_WIDTH if stage == 2 and i == 0 else (WIDTHS[stage - 3] if i == 0 else width)
                layers.append(Layer(hidden // cin, kernel))
            stages.append(tuple(layers))
        if not any(stages):
            raise ValueError(f"no ProxylessNAS backbone tensors under {prefix!r}stages.* in this state dict")
        return cls(tuple(stages))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent at expand 1) -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = Conv2dNormActivation(cin, hidden, 1, activation_layer=nn.ReLU6) if expand != 1 else None
        self.depthwise = Conv2dNormActivation(hidden, hidden, kernel, stride, groups=hidden, activation_layer=nn.ReLU6)
        self.project = Conv2dNormActivation(hidden, cout, 1, activation_layer=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class ProxylessBackbone(nn.Module):
    """The backbone of an architecture; ``forward`` gives the ends of stages 3, 5 and 7.

    Tensors are named ``stem.*`` and ``stages.stage<s>.<layer>.{expand,depthwise,project}.*``
    (paper stage numbers), which the remapping of :mod:`facenas.models.detection.remap` relies on.
    """

    strides = (8, 16, 32)

    def __init__(self, arch: str | ProxylessArch = "largest") -> None:
        super().__init__()
        self.arch = ProxylessArch.parse(arch)
        self.stem = Conv2dNormActivation(3, STEM_WIDTH, 3, 2, activation_layer=nn.ReLU6)
        stages = {"stage1": nn.Sequential(MBConv(STEM_WIDTH, STAGE1_WIDTH, 1, 3, 1))}
        cin = STAGE1_WIDTH
        for stage, width, stride, layers in zip(STAGES, WIDTHS, STRIDES, self.arch.stages):
            blocks = []
            for i, layer in enumerate(layers):
                blocks.append(MBConv(cin, width, layer.expand, layer.kernel, stride if i == 0 else 1))
                cin = width
            stages[f"stage{stage}"] = nn.Sequential(*blocks)
        self.stages = nn.ModuleDict(stages)
        self.out_channels = [WIDTHS[s - 2] for s in FEATURE_STAGES]
        self._features = {f"stage{s}" for s in FEATURE_STAGES}

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self._features:
                outs.append(x)
        return outs


def arch_graph(arch: str | ProxylessArch) -> Data:
    """An architecture as a torch-geometric graph for the ranker's GIN (AceNAS's ProxylessNAS
    encoding, ../shared/design/HYPERFD.md section 1.3): one node per layer of stages 2-7 (the
    fixed stage 1 carries no information and is left out), chain edges i -> i+1, node features
    one-hot(op) over :data:`OPS` then one-hot(stage 2..7): 12 dimensions."""
    import torch
    from torch_geometric.data import Data

    arch = ProxylessArch.parse(arch)
    rows = []
    for stage, _, layer in arch.layers():
        feature = [0.0] * (len(OPS) + len(STAGES))
        feature[OPS.index(str(layer))] = 1.0
        feature[len(OPS) + STAGES.index(stage)] = 1.0
        rows.append(feature)
    n = len(rows)
    edges = torch.tensor([list(range(n - 1)), list(range(1, n))], dtype=torch.long)
    return Data(x=torch.tensor(rows), edge_index=edges, num_nodes=n, arch=str(arch))
