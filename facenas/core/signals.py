"""Stopping a command at a safe point on SIGTERM or SIGINT (what SLURM, Kubernetes, ``timeout``
and Ctrl+C send).

:func:`handle_signals` installs one handler for both signals (main thread only; nested uses
share it). Inside a :func:`deferred` zone the first signal is only recorded: the code running
there checks :func:`requested` at its safe points (a study between trials, a training between
batches) and stops cleanly. Outside such a zone, or on a second signal, the handler raises
:class:`facenas.core.errors.Interrupted` at once.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: int | None = None
_installed = 0
_previous: dict[int, Any] = {}
_deferred: Counter[int] = Counter()


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _requested


def _handler(signum: int, frame: Any) -> None:
    global _requested
    if _requested is not None or not _deferred[signum]:
        _requested = _requested or signum
        raise Interrupted(signum)
    _requested = signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handle_signals() -> Iterator[bool]:
    """Handle SIGTERM and SIGINT as described in the module's docstring; yields whether this
    is the outermost use (the command itself, not a trial inside a study), which restores the
    previous handlers and forgets the request when it exits."""
    global _installed, _requested
    if not _main_thread():
        yield False
        return
    outer = _installed == 0
    if outer:
        _requested = None
        for signum in SIGNALS:
            _previous[signum] = signal.signal(signum, _handler)
    _installed += 1
    try:
        yield outer
    finally:
        _installed -= 1
        if outer:
            for signum, handler in _previous.items():
                signal.signal(signum, handler)
            _previous.clear()
            _requested = None


def defer(*signums: int) -> None:
    """Record the next of these signals instead of raising (pair with :func:`undefer`)."""
    for signum in signums:
        _deferred[signum] += 1


def undefer(*signums: int) -> None:
    for signum in signums:
        _deferred[signum] = max(0, _deferred[signum] - 1)


@contextmanager
def deferred(*signums: int) -> Iterator[None]:
    """A zone whose code checks :func:`requested` itself (default: both signals)."""
    signums = signums or SIGNALS
    defer(*signums)
    try:
        yield
    finally:
        undefer(*signums)


def check(message: str = "") -> None:
    """Raise :class:`Interrupted` (a safe point) when a stop was requested."""
    if _requested is not None:
        raise Interrupted(_requested, message, safe=True)
