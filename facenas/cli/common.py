"""What the tool verbs share: their option parser, JSON output and tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from facenas.core.errors import UserError
from facenas.core.values import json_safe


def tool_parser(verb: str, description: str):
    """A jsonargparse parser for ``facenas <verb>`` with ``--config``; parse errors raise
    :class:`UserError` (one line) instead of exiting."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=f"facenas {verb}", description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    return parser


def parse(parser, argv: Sequence[str]):
    """Parse, turning jsonargparse's errors into one :class:`UserError` line."""
    from jsonargparse import ArgumentError

    from facenas.core.errors import one_line_parse_error

    try:
        return parser.parse_args(list(argv))
    except ArgumentError as exc:
        raise UserError(f"{one_line_parse_error(str(exc))} (--help lists every option)") from None


def file_error(exc: OSError) -> str:
    """One line for a missing or unreadable file: what it is and its path, without ``[Errno N]``."""
    what = exc.strerror or "file not found"
    return f"{what}: {exc.filename}" if exc.filename else what


def print_json(value: Any) -> None:
    """One line of strict JSON (non-finite floats as null)."""
    print(json.dumps(json_safe(value)))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table; the first column is left-aligned, the others right-aligned."""
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*[str(c) for c in row])
    Console().print(out)


def number(value: float | None, digits: int = 4) -> str:
    """A table cell: ``value`` with ``digits`` decimals, or ``n/a`` where it is undefined (None
    or NaN; an infinite ratio stays ``inf``)."""
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"
