"""The error a user can fix: the command line prints its message as one line, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (a config value, a file, a name) with a message naming it."""
