"""Local pretrained weights: nothing is downloaded, and what did not load is reported."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class LoadReport:
    """What :func:`load_local_weights` did: tensors loaded, the module's tensors the file lacks
    (or has with another shape), the file's tensors the module has no place for, and those the
    key translation drops on purpose (e.g. an ImageNet classifier)."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for label, names in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if names:
                parts.append(f"{len(names)} {label} (e.g. {names[0]})")
        return ", ".join(parts)


class WeightsMismatch(ValueError):
    """A strict load found tensors missing from the file or with other shapes."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.summary())
        self.report = report


def load_local_weights(
    module: nn.Module, path: str | Path, translate: Callable[[str], str | None] | None = None, strict: bool = False
) -> LoadReport:
    """Load a local state dict (a ``.pth`` / ``.ckpt`` file, optionally under ``state_dict``,
    ``module.`` prefixes removed) into ``module``.

    ``translate`` maps a file's key to the module's (for weights saved by another library,
    e.g. torchvision's ``mobilenet_v2``); ``None`` drops the tensor on purpose.

    Matching names with matching shapes are loaded. When some of the module's tensors are not
    in the file, or the file has tensors the module lacks, a warning says how many and names
    one of each; when nothing matches it is an error (the file is for another network). With
    ``strict`` every tensor of the module must be in the file with its shape, else
    :class:`WeightsMismatch` (nothing is loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "pretrained weights not found", str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    own = module.state_dict()
    given, dropped = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        name = translate(key) if translate is not None else key
        if name is None:
            dropped.append(key)
        else:
            given[name] = value
    report = LoadReport(
        missing=[k for k in own if k not in given], unexpected=[k for k in given if k not in own], dropped=dropped
    )
    usable = {}
    for key, value in given.items():
        if key in own:
            if own[key].shape == value.shape:
                usable[key] = value
            else:
                report.mismatched.append(key)
    if strict and (report.missing or report.mismatched):
        raise WeightsMismatch(report)
    if not usable:
        raise ValueError(f"{path}: no tensor matches the module's parameters (names or shapes differ)")
    module.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    if report.missing or report.unexpected or report.mismatched:
        warnings.warn(f"{path}: {report.summary()}", stacklevel=2)
    return report
