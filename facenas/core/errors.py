"""The error a user can fix: the command line prints its message as one line, exit code 2."""

from __future__ import annotations

import re


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


_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')


def one_line_parse_error(message: str) -> str:
    """jsonargparse's nested, multi-line errors as one line: the full dotted key and the
    innermost reason (``model.init_args.optimizer: Expected a typing.Literal['sgd', ...]. Got
    value: rmsprop``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys: list[str] = []
    reason = ""
    for line in lines:
        match = _PARSER_KEY.search(line)
        if match:
            key = match.group(1)
            keys.append(key)
            rest = line[match.end() :].lstrip(": ").strip()
            reason = rest
            continue
        if line.startswith(
            ("Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")
        ):
            continue
        if "Problem with given class_path" in line:
            keys.append("init_args")
            continue
        if keys and not reason:
            reason = line.lstrip("- ")
    if not keys:
        return " ".join(lines)
    dotted = ".".join(k for i, k in enumerate(keys) if not (k == "init_args" and i + 1 == len(keys)))
    return f"{dotted}: {reason or ' '.join(lines)}"


def config_file_error(path: str) -> str | None:
    """Why a ``--config`` YAML file cannot be a config, as one line naming it (empty, or not
    valid YAML); None when it is fine or not a file (the parser reports a missing one, and reads
    a value that is YAML text itself)."""
    from pathlib import Path

    import yaml

    file = Path(path)
    try:
        if not file.is_file():
            return None
    except (OSError, ValueError):  # not a path: --config also takes the YAML text itself
        return None
    try:
        content = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return f"config file {path} cannot be read: {exc}"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"config file {path} is not valid YAML{where}: {problem}"
    if content is None:
        return f"config file {path} is empty (no keys, only blank lines or comments)"
    return None


def config_files(argv: list[str]) -> list[str]:
    """The values of ``--config`` in a command line (``--config X`` and ``--config=X``)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.partition("=")[2])
    return out
