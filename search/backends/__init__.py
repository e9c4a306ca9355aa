"""Search backends, each a small adapter behind :class:`Searcher` (ask / tell), chosen by name
or ``class_path`` in the search YAML."""
from __future__ import annotations

import importlib
from typing import Any

from .base import Budget, Searcher
from .moasha import MOASHA
from .optuna import OptunaSearcher
from .random import RandomSearcher
from .smac import SMACSearcher

BACKENDS: dict[str, type[Searcher]] = {
    "random": RandomSearcher,
    "smac": SMACSearcher,
    "optuna": OptunaSearcher,
    "moasha": MOASHA,
}


def create_searcher(spec: str | dict[str, Any]) -> Searcher:
    """A backend from ``"smac"`` or ``{"class_path": "smac" | "search.backends.SMACSearcher",
    "init_args": {...}}``."""
    if isinstance(spec, str):
        spec = {"class_path": spec}
    path = spec.get("class_path")
    args = dict(spec.get("init_args") or {})
    if path in BACKENDS:
        cls: Any = BACKENDS[path]
    elif isinstance(path, str) and "." in path:
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise ValueError(f"backend class {path!r} cannot be imported") from None
    else:
        raise ValueError(f"unknown backend {path!r}; choose from {', '.join(BACKENDS)} or give a class_path")
    if not (isinstance(cls, type) and issubclass(cls, Searcher)):
        raise ValueError(f"{path!r} is not a search.backends.Searcher")
    try:
        return cls(**args)
    except TypeError as exc:
        raise ValueError(f"backend {path!r}: {exc}") from None


__all__ = ["BACKENDS", "MOASHA", "Budget", "OptunaSearcher", "RandomSearcher", "SMACSearcher", "Searcher", "create_searcher"]
