"""Search backends, each a small adapter behind :class:`Searcher` (ask / tell), chosen by name
or ``class_path`` in the search YAML."""

from __future__ import annotations

from typing import Any

from facenas.core.registry import Registry

from .base import Budget, Searcher, SpaceExhausted
from .list import ListSearcher
from .moasha import MOASHA
from .optuna import OptunaSearcher
from .random import RandomSearcher
from .smac import SMACSearcher

BACKENDS: Registry[type[Searcher]] = Registry("backend")
BACKENDS.register("random", RandomSearcher)
BACKENDS.register("smac", SMACSearcher)
BACKENDS.register("optuna", OptunaSearcher)
BACKENDS.register("moasha", MOASHA)
BACKENDS.register("list", ListSearcher)
BACKENDS.alias("pool", "list")  # its former name, deprecated: "pool" means only HyperFD's candidate pool
# registered by class_path: the HyperFD package sits above search, which never imports it
BACKENDS.register("hyperfd", "facenas.hyperfd.backend.HyperFDSearcher")


def create_searcher(spec: str | dict[str, Any]) -> Searcher:
    """A backend from ``"smac"`` or ``{"class_path": "smac" | "facenas.search.backends.SMACSearcher",
    "init_args": {...}}``."""
    return BACKENDS.instantiate(spec, Searcher)


__all__ = [
    "BACKENDS",
    "MOASHA",
    "Budget",
    "ListSearcher",
    "OptunaSearcher",
    "RandomSearcher",
    "SMACSearcher",
    "Searcher",
    "SpaceExhausted",
    "create_searcher",
]
