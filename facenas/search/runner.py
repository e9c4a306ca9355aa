"""Running one trial: the base training YAML plus the trial's overrides, trained by the same
``facenas fit`` command in this process or in a child process, objectives read from the logged
metrics."""

from __future__ import annotations

import csv
import gc
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback

from facenas.core import signals
from facenas.core.errors import Interrupted
from facenas.training.config import nested

from .trial import Objective, Result, Status, Trial, crashed, interrupted, outcome

# how a `facenas fit` stopped by SIGTERM / SIGINT exits: at a safe point (128 + n) or killed by it (-n)
_STOPPED = {code: sig.name for sig in (signal.SIGTERM, signal.SIGINT) for code in (128 + sig, -sig)}


@dataclass
class TrialJob:
    """Everything needed to run one trial, picklable (it travels to Dask workers)."""

    trial: Trial
    objectives: list[Objective]
    base_configs: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def write_config(self) -> Path:
        """The trial's overrides as ``<run_dir>/trial.yaml`` (so every run can be repeated by hand)."""
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = dict(self.overrides)
        overrides.setdefault("trainer.logger", csv_logger(run_dir))
        overrides.setdefault("trainer.default_root_dir", str(run_dir))
        overrides.setdefault("trainer.enable_progress_bar", False)
        overrides.setdefault("trainer.enable_model_summary", False)
        path = run_dir / "trial.yaml"
        path.write_text(yaml.safe_dump(nested(overrides), sort_keys=True))
        return path

    def args(self) -> list[str]:
        """The ``facenas`` arguments that train this trial (after :meth:`write_config`). The best
        checkpoint is tested only when an objective is a ``test/`` metric (a lookup table's
        test AP); a search never looks at the test split."""
        args = ["fit"]
        for base in self.base_configs:
            args += ["--config", base]
        tests = any(o.metric.startswith("test/") for o in self.objectives)
        return args + [
            "--config",
            str(Path(self.run_dir) / "trial.yaml"),
            "--test_after_fit",
            str(tests).lower(),
            "--metrics_table",
            "false",
        ]


def csv_logger(run_dir: str | Path) -> dict[str, Any]:
    """The CSV logger of a trial: ``<run_dir>/logs/metrics.csv``."""
    return {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "", "version": "logs"},
    }


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / "logs" / "metrics.csv"


def read_metrics(metrics_csv: Path, objectives: list[Objective]) -> tuple[dict[str, float], list[tuple[int, float]]]:
    """The value of every objective in a CSVLogger ``metrics.csv`` (the last logged, or the best
    for ``reduce: best``; NaN is never the best), and the first objective's history as (epoch,
    value)."""
    values: dict[str, float] = {}
    history: list[tuple[int, float]] = []
    if not metrics_csv.is_file():
        return values, history
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for o in objectives:
                text = row.get(o.metric, "")
                if text not in ("", None):
                    value = float(text)
                    held = values.get(o.metric)
                    if o.reduce == "last" or held is None or o.cost(value) < o.cost(held) or math.isnan(held):
                        values[o.metric] = value
                    if o is objectives[0]:
                        history.append((int(float(row.get("epoch") or 0)), float(text)))
    return values, history


def _finished(job: TrialJob, start: float, train_seconds: float = 0.0, pruned: bool = False) -> Result:
    """The result of a training that ended (normally or pruned), from its metrics file."""
    values, history = read_metrics(metrics_file(job.run_dir), job.objectives)
    status, error = (Status.PRUNED, None) if pruned else outcome(values, job.objectives)
    return Result(status, values, time.time() - start, error, job.run_dir, history, train_seconds)


def terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM a child (a `facenas fit` saves its checkpoint and exits), SIGKILL it after ``grace`` s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_subprocess(
    job: TrialJob, should_stop: Callable[[], bool] | None = None, grace: float = 20.0, poll: float = 0.5
) -> Result:
    """Train a trial as ``python -m facenas fit`` in a child process: a crash, an out-of-memory
    kill or a diverged loss cannot take the caller down.

    ``should_stop`` is asked every ``poll`` seconds; when it says so the child is terminated
    (SIGTERM, then SIGKILL after ``grace`` seconds) and the result is *interrupted* (never
    recorded: the trial runs again), as it is when the child itself was stopped by SIGTERM or
    SIGINT."""
    start = time.time()
    job.write_config()
    # the child dies with this process (the CLI reads the variable), so that a trial re-run
    # after a lost worker or a killed study never races an orphan writing into the same folder
    env = {**os.environ, **job.env, "FACENAS_PARENT_PID": str(os.getpid())}
    log = Path(job.run_dir) / "train.log"
    stopped = False
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facenas", *job.args()],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=os.getcwd(),
        )
        try:
            while True:
                try:
                    proc.wait(timeout=poll if should_stop is not None else None)
                    break
                except subprocess.TimeoutExpired:
                    if should_stop():
                        stopped = True
                        terminate(proc, grace)
                        break
        except BaseException:  # the caller itself is being stopped (Interrupted in the main thread)
            terminate(proc, min(grace, 5.0))
            raise
    if stopped or proc.returncode in _STOPPED:
        reason = "the study stopped" if stopped else f"stopped by {_STOPPED[proc.returncode]}"
        return interrupted(f"{reason} (exit code {proc.returncode})", time.time() - start, job.run_dir)
    if proc.returncode != 0:
        values, history = read_metrics(metrics_file(job.run_dir), job.objectives)
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return Result(Status.FAILED, values, time.time() - start, f"{reason}: {tail[0][:500]}", job.run_dir, history)
    return _finished(job, start)


class PruningCallback(Callback):
    """Passes each validation's value of ``metric`` to ``should_prune(epoch, value)`` and stops the
    training when it returns True (the backend pruned the trial)."""

    def __init__(self, metric: str, should_prune: Callable[[int, float], bool]) -> None:
        self.metric = metric
        self.should_prune = should_prune
        self.pruned = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        if self.should_prune(trainer.current_epoch, float(trainer.callback_metrics[self.metric])):
            self.pruned = True
            trainer.should_stop = True


def run_in_process(job: TrialJob, should_prune: Callable[[int, float], bool] | None = None) -> Result:
    """Train a trial in this process with the same command a subprocess runs (fastest for small
    trials; intermediate values reach the backend, so pruners work). Its output goes to
    ``<run_dir>/train.log``. Exceptions, out-of-memory errors and non-finite losses become a
    failed result; the study goes on."""
    from facenas.training import FaceNASCLI

    start = time.time()
    if signals.requested() is not None:  # the study is stopping: do not start
        return interrupted("the study stopped before the trial started", 0.0, job.run_dir)
    job.write_config()
    pruning = PruningCallback(job.objectives[0].metric, should_prune) if should_prune is not None else None
    try:
        with open(Path(job.run_dir) / "train.log", "w") as log, redirect_stdout(log), redirect_stderr(log):
            fit_start = time.time()
            FaceNASCLI(job.args(), trainer_defaults={"callbacks": [pruning]} if pruning is not None else {})
            fit_seconds = time.time() - fit_start
        return _finished(job, start, fit_seconds, pruned=pruning is not None and pruning.pruned)
    except Interrupted as exc:  # SIGTERM / SIGINT: stopped between two batches, to be run again
        return interrupted(str(exc), time.time() - start, job.run_dir)
    except (Exception, SystemExit) as exc:  # a trial's failure is a result, never the study's end
        if signals.requested() is not None:  # an error on the way out of a stopped training
            return interrupted(f"stopped ({type(exc).__name__})", time.time() - start, job.run_dir)
        return crashed(exc, time.time() - start, job.run_dir)
    finally:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
