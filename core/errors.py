"""The error a user can fix: the command line prints its message as one line, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (a config value, a file, a name) with a message naming it."""


class Interrupted(BaseException):
    """The command was asked to stop (SIGTERM, SIGINT): one line, exit code 128 + the signal.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    mistakes it for a failure (a search trial must not be recorded as failed because the study
    was stopped). ``safe`` tells whether it was raised at a point where the training state is
    consistent (between batches), i.e. where a resumable checkpoint can be written.
    """

    def __init__(self, signum: int, message: str = "", safe: bool = False) -> None:
        import signal

        self.signum = int(signum)
        self.safe = safe
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        self.signame = name
        super().__init__(message or f"stopped by {name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
