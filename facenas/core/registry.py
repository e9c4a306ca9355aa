"""Registries by name, timm's ``register_model`` / ``create_model`` pattern: users pick heads,
backbones, spaces, searchers, executors and data formats by name in YAML."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class UnknownName(UserError, ValueError):
    """A name that is not registered; the message lists the registered ones."""


class Registry(Generic[T]):
    """Objects (classes or factories) by name.

    Args:
        kind: what is registered, for messages (``"head"``, ``"search space"``).
        case_sensitive: when False, names are matched case-insensitively (``CosFace`` is
            ``cosface``).
    """

    def __init__(self, kind: str, *, case_sensitive: bool = True) -> None:
        self.kind = kind
        self.case_sensitive = case_sensitive
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # deprecated name -> registered name

    def _key(self, name: str) -> str:
        return name if self.case_sensitive else name.lower()

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``, or use as a decorator: ``@registry.register("x")``.
        ``obj`` may be a dotted ``class_path`` string, imported on first use: a lower layer
        names a class of a higher one without importing it. A name registered twice is an
        error."""

        def add(item: T) -> T:
            key = self._key(name)
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = item
            return item

        return add if obj is None else add(obj)

    def alias(self, old: str, new: str) -> None:
        """Keep a renamed entry's old name working: ``old`` resolves to the one registered as
        ``new``, with a one-line deprecation notice on stderr whenever it is looked up; it is
        not listed among the names."""
        if self._key(new) not in self._items:
            raise ValueError(f"{self.kind} {new!r} is not registered")
        if self._key(old) in self._items or self._key(old) in self._aliases:
            raise ValueError(f"{self.kind} {old!r} is already registered")
        self._aliases[self._key(old)] = self._key(new)

    def canonical(self, name: str, notice: bool = False) -> str:
        """The registered name ``name`` stands for: itself, or the new name of a deprecated
        alias (printing the one-line notice when ``notice``); any other string unchanged."""
        key = self._key(str(name))
        if key not in self._aliases:
            return name
        new = self._aliases[key]
        if notice:
            print(f"facenas: {self.kind} {name!r} is deprecated; use {new!r}", file=sys.stderr)
        return new

    def get(self, name: str) -> T:
        """The object registered under ``name`` (or a deprecated alias of it); :class:`UnknownName`
        names the choices."""
        key = self._key(self.canonical(str(name), notice=True))
        try:
            item = self._items[key]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}") from None
        if isinstance(item, str):  # a class_path registered by name: import it now
            module, _, attr = item.rpartition(".")
            item = self._items[key] = getattr(importlib.import_module(module), attr)
        return item

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self._key(name) in self._items or self._key(name) in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def instantiate(self, spec: str | Mapping[str, Any], base: type | None = None) -> Any:
        """An instance from a YAML-style spec: a registered name, or ``{"class_path": name or
        dotted path, "init_args": {...}}``. Unknown names, classes that are not ``base``
        subclasses and bad arguments are :class:`ValueError` s naming the spec."""
        if isinstance(spec, str):
            spec = {"class_path": spec}
        path = spec.get("class_path")
        if not isinstance(path, str):
            raise ValueError(f"a {self.kind} needs a class_path, got {dict(spec)!r}")
        if path in self:
            cls: Any = self.get(path)
        elif "." in path:
            module, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                raise UnknownName(f"{self.kind} class {path!r} cannot be imported") from None
        else:
            self.get(path)  # raises UnknownName with the choices
        if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{path!r} is not a {base.__module__}.{base.__qualname__}")
        try:
            return cls(**dict(spec.get("init_args") or {}))
        except TypeError as exc:
            raise ValueError(f"{self.kind} {path!r}: {exc}") from None
