"""Errors models raise for the training loop and the search driver to act on."""
from __future__ import annotations


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step.

    ``facenas fit`` reports it in one line (exit code 1); a search marks the trial failed.
    """
