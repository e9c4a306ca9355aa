"""Rich progress bars for the long loops outside the Trainer (data checks, evaluation)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_tick: ContextVar[Callable[[], None] | None] = ContextVar("facenas_progress_tick", default=None)

_COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
)


def progress_enabled() -> bool:
    """Bars are drawn on an interactive stderr, unless ``FACENAS_PROGRESS=0``; ``=1`` forces them."""
    flag = os.environ.get("FACENAS_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar on stderr (a plain iteration when disabled)."""
    if not progress_enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(*_COLUMNS, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


@contextmanager
def counting(description: str, total: int | None = None) -> Iterator[None]:
    """Show a bar that advances whenever code below calls :func:`tick` (used by the readers,
    whose loops do not know the number of images before they parse the file)."""
    if not progress_enabled():
        yield
        return
    with Progress(*_COLUMNS, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        token = _tick.set(lambda: progress.advance(task))
        try:
            yield
        finally:
            _tick.reset(token)


def tick() -> None:
    """Advance the bar of the enclosing :func:`counting` block, if any."""
    callback = _tick.get()
    if callback is not None:
        callback()


@contextmanager
def bar(description: str, total: int, completed: int = 0) -> Iterator[Callable[[], None]]:
    """A bar the caller advances itself (``with bar(...) as advance: ... advance()``), starting
    at ``completed`` of ``total`` (work finished by an earlier run); a no-op when bars are
    disabled. Unlike :func:`counting` it does not take the readers' :func:`tick`."""
    if not progress_enabled():
        yield lambda: None
        return
    with Progress(*_COLUMNS, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda: progress.advance(task)
