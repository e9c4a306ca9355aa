"""facenas: face AutoML on PyTorch Lightning. ``python -m facenas`` runs the command line of
:mod:`facenas.cli` (``facenas --help`` lists every verb)."""

from __future__ import annotations

import os
import sys

from facenas.cli import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
