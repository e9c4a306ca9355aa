"""The ``facenas`` command line: ``facenas <verb>`` for the training verbs and ``facenas <group>
<verb>`` for the rest, one module per verb or group (``eval`` a package), each parsing its options,
calling one library function and rendering the result. ``facenas`` and ``python -m facenas`` run
:func:`main`."""

from __future__ import annotations

from .main import VERBS, main

__all__ = ["VERBS", "main"]
