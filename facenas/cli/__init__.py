"""The ``facenas`` command line: one module per verb, each parsing its options, calling one
library function and rendering the result. ``facenas`` and ``python -m facenas`` run
:func:`main`."""

from __future__ import annotations

from .main import VERBS, main

__all__ = ["VERBS", "main"]
