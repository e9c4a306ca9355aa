"""Shared fixtures: where the real data lives, and runners for the `facenas` command (in this
process by default, in a fresh one where only a real process is faithful)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACENAS_DATA", REPO.parent / "shared" / "data"))

# what every run of the command gets in its environment: no progress bars, W&B never online
COMMAND_ENV = {"FACENAS_PROGRESS": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def pytest_configure(config) -> None:
    """Under pytest-xdist, each test process gets its share of the cores (torch threads, and
    OMP_NUM_THREADS for the processes its tests start) instead of all of them each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def data_path(*parts: str) -> Path:
    """A path under the shared real-data folder; skips the test when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def wider_val() -> tuple[Path, Path]:
    """(gt txt, image folder) of the WIDER FACE validation subset."""
    return (
        data_path("widerface", "wider_face_split", "wider_face_val_bbx_gt.txt"),
        data_path("widerface", "WIDER_val", "images"),
    )


@dataclass
class Ran:
    """What a run of the command left: its exit code and output (the fields of
    :class:`subprocess.CompletedProcess` that tests read)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    in_process: bool = field(default=True, repr=False)


def run_facenas(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    process: bool = False,
) -> Ran | subprocess.CompletedProcess:
    """Run ``facenas ARGS`` as a user would and capture its exit code, stdout and stderr.

    By default the command runs in this process (:func:`facenas.cli.main`, see
    :func:`run_facenas_in_process`), which saves a Python start and the torch and Lightning
    imports per call. ``process=True`` runs ``python -m facenas ARGS`` in a fresh process: the
    entry point itself, signals, DDP (which re-launches its own command line), and anything
    that must die with its parent. ``timeout`` (seconds) bounds a fresh process only."""
    if process or "FACENAS_PARENT_PID" in command_env(env):  # main() would tie this process to that one
        return run_facenas_process(*args, cwd=cwd, env=env, timeout=timeout)
    return run_facenas_in_process(*args, cwd=cwd, env=env)


def command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a run of the command gets: this one, :data:`COMMAND_ENV`, ``env``, and
    this checkout first on ``PYTHONPATH``; never a W&B key."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **COMMAND_ENV, **(env or {})}
    full.pop("WANDB_API_KEY", None)
    return full


def run_facenas_process(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m facenas ARGS`` in a fresh process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "facenas", *args],
        cwd=cwd or REPO,
        env=command_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_facenas_in_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Ran:
    """Run :func:`facenas.cli.main` on ``ARGS`` in this process, as a fresh process would: its
    stdout, stderr, Lightning's log lines and warnings captured; working directory,
    environment, ``sys.argv``/``sys.path``, signal handlers, torch's settings and the random
    states restored afterwards; ``SystemExit`` turned into the return code."""
    from facenas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _as_a_fresh_process(["facenas", *args], cwd or REPO, command_env(env), err):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _exit_code(lambda: main(list(args)))
    return Ran(["facenas", *args], code, out.getvalue(), err.getvalue())


def run_script(script: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Ran:
    """Run ``python SCRIPT ARGS`` in this process (:func:`runpy.run_path` as ``__main__``, its
    folder first on ``sys.path``), with the same care as :func:`run_facenas_in_process`; the
    modules it imported from its own folder are forgotten afterwards."""
    import runpy

    script = Path(script).resolve()
    folder = str(script.parent)
    before = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    try:
        with _as_a_fresh_process([str(script), *args], cwd or REPO, command_env(env), err):
            sys.path.insert(0, folder)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = _exit_code(lambda: runpy.run_path(str(script), run_name="__main__"))
    finally:
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(folder + os.sep):
                del sys.modules[name]
    return Ran([str(script), *args], code, out.getvalue(), err.getvalue())


def _exit_code(run) -> int:
    """Call ``run``; its return value, or its ``SystemExit``, as a process's exit code (a
    message given to ``SystemExit`` is printed on stderr, as Python does)."""
    try:
        code = run()
    except SystemExit as exc:
        code = exc.code
        if not isinstance(code, int | None):
            print(code, file=sys.stderr)
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return int(code) if isinstance(code, int) else 0


# loggers that a fresh process gives their own stderr handler (their package does when the root
# logger has none, as in a fresh process; under pytest it has pytest's)
_OWN_HANDLER = ("lightning.pytorch", "lightning.fabric")
# Python's default warning filters in a fresh process (no -W, no PYTHONWARNINGS)
_DEFAULT_FILTERS = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _as_a_fresh_process(argv: list[str], cwd: Path, env: dict[str, str], err: io.StringIO) -> Iterator[None]:
    import lightning.pytorch  # noqa: F401  (it decides at import whether to add its own log handler)
    import numpy as np
    import torch

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    saved_grad = torch.is_grad_enabled()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_torch = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_float32_matmul_precision(),
        torch.get_default_dtype(),
    )
    saved_random = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    root = logging.getLogger()
    saved_root = list(root.handlers)
    own = {name: logging.getLogger(name) for name in _OWN_HANDLER}
    saved_own = {name: (list(lg.handlers), lg.propagate, lg.level) for name, lg in own.items()}
    loggers = {name: lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    saved_levels = {name: (lg.level, list(lg.filters)) for name, lg in loggers.items()}
    # handlers bound to the stderr of the time their package was imported write to this run's stderr
    rebound = [
        (h, h.stream)
        for lg in [root, *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]
        for h in lg.handlers
        if type(h) is logging.StreamHandler and not isinstance(h.stream, io.StringIO)
    ]
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = list(argv)
    for handler in saved_root:
        root.removeHandler(handler)
    for lg in own.values():
        if not lg.handlers:
            lg.addHandler(logging.StreamHandler(err))
            lg.propagate = False
    for handler, _ in rebound:
        handler.setStream(err)
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_DEFAULT_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            warnings.showwarning = _show_warning  # on this run's stderr, not in pytest's record
            yield
    finally:
        for handler, stream in rebound:
            handler.setStream(stream)
        for name, lg in own.items():
            lg.handlers[:], lg.propagate, level = saved_own[name][0], saved_own[name][1], saved_own[name][2]
            lg.setLevel(level)
        for handler in saved_root:
            root.addHandler(handler)
        for name, (level, filters) in saved_levels.items():  # levels and filters the command set
            lg = loggers[name]
            lg.filters[:] = filters
            if lg.level != level:
                lg.setLevel(level)
        random.setstate(saved_random[0])
        np.random.set_state(saved_random[1])
        torch.random.set_rng_state(saved_random[2])
        threads, deterministic, warn_only, precision, dtype = saved_torch
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_float32_matmul_precision(precision)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(saved_grad)
        for signum, handler in saved_signals.items():
            signal.signal(signum, handler)
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def synthetic_identities(tmp_path: Path, identities: int = 16, images: int = 8, ratios=(4, 2, 2), **kw):
    """A small closed-set FaceIDDataModule of synthetic identities at 32 px (each identity's
    images split by ``ratios``), for tests that train in seconds."""
    from facenas.datamodules.recognition import FaceIDDataModule

    return FaceIDDataModule(
        synthetic_identities=identities,
        synthetic_images_per_identity=images,
        synthetic_size=32,
        image_size=32,
        synthetic_root=str(tmp_path / "ids"),
        split_file=str(tmp_path / "split.json"),
        split_by="image",
        split_ratios=list(ratios),
        batch_size=16,
        eval_batch_size=32,
        num_workers=0,
        **kw,
    )
