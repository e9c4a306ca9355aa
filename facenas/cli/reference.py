"""Print the CLI reference (``docs/cli.md``), generated from the verb table:
``python -m facenas.cli.reference > docs/cli.md``."""

from __future__ import annotations

import sys

from .main import reference_markdown

if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
