"""Detection backbones by name: feature maps at strides 8, 16 and 32.

``mobilenet_v2_<width>`` (HyperFD's default is ``mobilenet_v2_0.5``: torchvision's MobileNetV2
with ``width_mult=0.5``), an architecture of HyperFD's NAS space (``proxyless_x05:<arch>``, see
:mod:`facenas.models.detection.proxyless`) or any timm model that supports ``features_only``
(``timm/<name>`` or a bare timm name). Pretrained weights come only from a local file; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from facenas.core.registry import Registry
from facenas.core.weights import load_local_weights

from .proxyless import ProxylessBackbone

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("detection backbone")
register_backbone = BACKBONES.register


class MobileNetV2Features(nn.Module):
    """torchvision MobileNetV2 cut after the last block of strides 8, 16 and 32 (the final
    1x1 expansion to 1280 channels is dropped, as in RetinaFace's MobileNet variant).

    ``pretrained`` may be a torchvision ``mobilenet_v2(width_mult=...)`` state dict (ImageNet
    weights a user has locally): :meth:`pretrained_key` maps its ``features.<i>`` tensors into
    the stages and drops the final 1x1 expansion and the classifier.
    """

    strides = (8, 16, 32)
    stage_ends = (7, 14, 18)  # torchvision's features[:7], [7:14], [14:18]

    def __init__(self, width: float = 0.5) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        features = mobilenet_v2(width_mult=width).features
        bounds = (0, *self.stage_ends)
        self.stages = nn.ModuleList([features[a:b] for a, b in zip(bounds, bounds[1:])])
        self.out_channels = [stage[-1].out_channels for stage in self.stages]

    @classmethod
    def pretrained_key(cls, key: str) -> str | None:
        """torchvision ``features.<i>.<rest>`` -> ``stages.<s>.<i>.<rest>`` (slices of an
        ``nn.Sequential`` keep their indices); the 1280-channel expansion and the classifier ->
        ``None``; any other key (this module's own) unchanged."""
        head, _, rest = key.partition(".")
        if head == "classifier":
            return None
        if head != "features":
            return key
        index = int(rest.split(".", 1)[0])
        stage = next((s for s, end in enumerate(cls.stage_ends) if index < end), None)
        return None if stage is None else f"stages.{stage}.{rest}"

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


for _width in (0.25, 0.5, 0.75, 1.0):
    register_backbone(f"mobilenet_v2_{_width}")(lambda width=_width, **kw: MobileNetV2Features(width, **kw))


register_backbone("proxyless_x05")(lambda arch="largest", **kw: ProxylessBackbone(arch, **kw))


class TimmFeatures(nn.Module):
    """A timm model with ``features_only=True``, keeping the maps at strides 8, 16, 32."""

    strides = (8, 16, 32)

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(name, pretrained=False, features_only=True)
        reductions = self.body.feature_info.reduction()
        missing = [s for s in self.strides if s not in reductions]
        if missing:
            raise ValueError(f"timm model {name!r} has no feature maps at strides {missing} (it has {reductions})")
        self.keep = [reductions.index(s) for s in self.strides]
        channels = self.body.feature_info.channels()
        self.out_channels = [channels[i] for i in self.keep]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body(x)
        return [feats[i] for i in self.keep]


def create_backbone(name: str, pretrained: str | Path | None = None) -> nn.Module:
    """Build a backbone by name (``family:argument`` passes the argument to a registered
    family, e.g. ``proxyless_x05:largest``); returns a module with ``out_channels`` and
    ``strides`` whose forward gives three feature maps."""
    family, sep, argument = name.partition(":")
    if sep and family in BACKBONES:
        backbone = BACKBONES.get(family)(argument)
    elif name in BACKBONES:
        backbone = BACKBONES.get(name)()
    else:
        import timm

        timm_name = name.removeprefix("timm/")
        if not timm.is_model(timm_name):
            raise ValueError(f"unknown backbone {name!r}: not one of {', '.join(BACKBONES)} nor a timm model")
        backbone = TimmFeatures(timm_name)
    if pretrained is not None:
        load_local_weights(backbone, pretrained, getattr(backbone, "pretrained_key", None))
    return backbone
