"""The training configuration as ``facenas fit`` reads it, for code that needs it without training.

A search trial trains ``facenas fit --config <base>... --config <trial overrides>``. Whoever else
needs that configuration (a study checking its mapping keys, the report exporting the best
trial, the ``hyperfd`` backend and the lookup table reading the dataset) goes through the same
:class:`~facenas.training.cli.FaceNASCLI` parser here: the YAMLs are merged, validated and
completed with the defaults by LightningCLI itself, and a data module is instantiated from the
parsed ``data`` exactly as ``fit`` instantiates it. Nothing here seeds the process or builds a
trainer or a model.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule

from .cli import FaceNASCLI


def nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as a nested mapping: ``{"model.init_args.lr": 0.1}`` -> ``{"model": {"init_args":
    {"lr": 0.1}}}`` (the form of a YAML given to ``--config``)."""
    root: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = root
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


def config_args(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> list[str]:
    """The command-line arguments of ``configs`` and dotted ``overrides``: ``--config`` per file,
    then the overrides as one more ``--config`` (a YAML string), the way a search trial passes its
    ``trial.yaml``; later ones win key by key."""
    args: list[str] = []
    for path in configs:
        args += ["--config", str(path)]
    if overrides:
        args += ["--config", yaml.safe_dump(nested(dict(overrides)), sort_keys=False)]
    return args


class _Parser(FaceNASCLI):
    """FaceNASCLI that parses and stops: no global seed, no instantiation."""

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # LightningCLI keeps the dump of the first parse for the hparams its instantiator records
        self.__dict__.pop("config_dump", None)
        super().parse_arguments(parser, args)

    def _set_seed(self) -> None:  # LightningCLI seeds the process right after parsing
        pass

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


_lock = threading.Lock()
_cached: _Parser | None = None


def parse_config(args: Sequence[str]) -> tuple[Any, Namespace]:
    """FaceNASCLI's parser (built once per process) and the configuration it parses from ``args``
    (what follows ``facenas fit``: ``--config`` files, ``--key value`` options). A bad file or key
    is one :class:`~facenas.core.errors.UserError`, as ``facenas fit`` reports it."""
    global _cached
    with _lock, warnings.catch_warnings():
        # LightningCLI warns when args are given while sys.argv has some (any command calling this)
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        if _cached is None:
            parser = _Parser(list(args), run=False, save_config_callback=None)
            _cached = parser
        else:
            parser = _cached
            parser.parse_arguments(parser.parser, list(args))
        return parser.parser, parser.config


def resolved_config(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The training configuration of ``configs`` plus dotted ``overrides`` as ``facenas fit``
    resolves it: merged and validated by its parser, every key present with its default (the
    content of the ``config.yaml`` a run saves), class names as full ``class_path`` s."""
    parser, config = parse_config(config_args(configs, overrides))
    return yaml.safe_load(parser.dump(config, skip_unset=False, skip_link_targets=False)) or {}


def build_datamodule(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> LightningDataModule:
    """The data module of ``configs`` plus dotted ``overrides``, instantiated from the parsed
    ``data`` as ``facenas fit`` instantiates it (same class, same arguments after parsing)."""
    return datamodule_from_args(config_args(configs, overrides))


def datamodule_from_args(args: Sequence[str]) -> LightningDataModule:
    """The data module of ``facenas fit`` arguments (``--config`` files, ``--data.init_args.<key>
    <value>`` options), without the model or the trainer."""
    parser, config = parse_config(args)
    return parser.instantiate(Namespace(data=config["data"]), instantiate_groups=False)["data"]


__all__ = ["build_datamodule", "config_args", "datamodule_from_args", "nested", "parse_config", "resolved_config"]
