"""Search backends, each a small adapter behind :class:`Searcher` (ask / tell), chosen by name
or ``class_path`` in the search YAML."""

from __future__ import annotations

from typing import Any

from core.registry import Registry

from .base import Budget, Searcher, SpaceExhausted
from .hyperfd import HyperFDSearcher
from .moasha import MOASHA
from .optuna import OptunaSearcher
from .pool import PoolSearcher
from .random import RandomSearcher
from .smac import SMACSearcher

BACKENDS: Registry[type[Searcher]] = Registry("backend")
BACKENDS.register("random", RandomSearcher)
BACKENDS.register("smac", SMACSearcher)
BACKENDS.register("optuna", OptunaSearcher)
BACKENDS.register("moasha", MOASHA)
BACKENDS.register("pool", PoolSearcher)
BACKENDS.register("hyperfd", HyperFDSearcher)


def create_searcher(spec: str | dict[str, Any]) -> Searcher:
    """A backend from ``"smac"`` or ``{"class_path": "smac" | "search.backends.SMACSearcher",
    "init_args": {...}}``."""
    return BACKENDS.instantiate(spec, Searcher)


__all__ = [
    "BACKENDS",
    "MOASHA",
    "Budget",
    "HyperFDSearcher",
    "OptunaSearcher",
    "PoolSearcher",
    "RandomSearcher",
    "SMACSearcher",
    "Searcher",
    "SpaceExhausted",
    "create_searcher",
]
