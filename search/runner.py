"""Running one trial: the base training YAML plus the trial's overrides, trained by Lightning
(in this process, or as a ``facenas fit`` subprocess), objectives read from the logged metrics."""
from __future__ import annotations

import csv
import gc
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .spaces import nested
from .trial import Objective, Result, Status


@dataclass
class TrialJob:
    """Everything needed to train one trial, picklable (it travels to Dask workers)."""

    trial_id: int
    base_configs: list[str]
    overrides: dict[str, Any]
    run_dir: str
    objectives: list[Objective]
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

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "facenas", "fit"]
        for base in self.base_configs:
            args += ["--config", base]
        return args + ["--config", str(Path(self.run_dir) / "trial.yaml"), "--test_after_fit", "false"]


def csv_logger(run_dir: str | Path) -> dict[str, Any]:
    """The CSV logger of a trial: ``<run_dir>/logs/metrics.csv``."""
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir), "name": "", "version": "logs"}}


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / "logs" / "metrics.csv"


def read_metrics(metrics_csv: Path, objectives: list[Objective]) -> tuple[dict[str, float], list[tuple[int, float]]]:
    """Last logged value of every objective in a CSVLogger ``metrics.csv``, and the first
    objective's history as (epoch, value)."""
    values: dict[str, float] = {}
    history: list[tuple[int, float]] = []
    if not metrics_csv.is_file():
        return values, history
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for o in objectives:
                text = row.get(o.metric, "")
                if text not in ("", None):
                    values[o.metric] = float(text)
                    if o is objectives[0]:
                        history.append((int(float(row.get("epoch") or 0)), float(text)))
    return values, history


def _outcome(values: dict[str, float], objectives: list[Objective]) -> tuple[Status, str | None]:
    missing = [o.metric for o in objectives if o.metric not in values]
    if missing:
        return Status.FAILED, f"objective(s) never logged: {', '.join(missing)}"
    bad = [o.metric for o in objectives if not math.isfinite(values[o.metric]) and not o.metric.endswith("ratio")]
    if bad:
        return Status.FAILED, f"non-finite objective(s): {', '.join(bad)}"
    return Status.SUCCESS, None


def run_subprocess(job: TrialJob) -> Result:
    """Train a trial as ``python -m facenas fit`` in a child process: a crash, an out-of-memory
    kill or a diverged loss cannot take the caller down."""
    start = time.time()
    job.write_config()
    # the child dies with this process (facenas.py reads the variable), so that a trial re-run
    # after a lost worker or a killed study never races an orphan writing into the same folder
    env = {**os.environ, **job.env, "FACENAS_PARENT_PID": str(os.getpid())}
    log = Path(job.run_dir) / "train.log"
    with open(log, "w") as out:
        proc = subprocess.run(job.command(), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
    values, history = read_metrics(metrics_file(job.run_dir), job.objectives)
    duration = time.time() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return Result(Status.FAILED, values, duration, f"{reason}: {tail[0][:500]}", job.run_dir, history)
    status, error = _outcome(values, job.objectives)
    return Result(status, values, duration, error, job.run_dir, history)


class _Reporter:
    """A Lightning callback passing each validation's first-objective value to the backend, and
    stopping the run when the backend prunes it."""

    def __new__(cls, metric: str, report: Callable[[int, float], bool]):
        from lightning.pytorch.callbacks import Callback

        class Reporter(Callback):
            pruned = False

            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or metric not in trainer.callback_metrics:
                    return
                if report(trainer.current_epoch, float(trainer.callback_metrics[metric])):
                    Reporter.pruned = True
                    trainer.should_stop = True

        return Reporter()


def run_in_process(job: TrialJob, report: Callable[[int, float], bool] | None = None) -> Result:
    """Train a trial in this process (fastest for small trials; intermediate reports reach the
    backend, so Optuna's pruners work). Exceptions, out-of-memory errors and non-finite losses
    become a failed result; the study goes on."""
    import logging
    import warnings

    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    start = time.time()
    config = job.write_config()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
    args: list[str] = []
    for base in job.base_configs:
        args += ["--config", base]
    args += ["--config", str(config)]
    reporter = _Reporter(job.objectives[0].metric, report) if report is not None else None
    cli = None
    try:
        cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                           args=args, save_config_callback=None, parser_kwargs={"exit_on_error": False},
                           trainer_defaults={"enable_checkpointing": False})
        if reporter is not None:
            cli.trainer.callbacks.append(reporter)
        fit_start = time.time()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_seconds = time.time() - fit_start
        values = {o.metric: float(cli.trainer.callback_metrics[o.metric]) for o in job.objectives
                  if o.metric in cli.trainer.callback_metrics}
        _, history = read_metrics(metrics_file(job.run_dir), job.objectives)
        if reporter is not None and type(reporter).pruned:
            return Result(Status.PRUNED, values, time.time() - start, None, job.run_dir, history, fit_seconds)
        status, error = _outcome(values, job.objectives)
        return Result(status, values, time.time() - start, error, job.run_dir, history, fit_seconds)
    except (Exception, SystemExit) as exc:  # a trial's failure is a result, never the study's end
        message = f"{type(exc).__name__}: {exc}".strip()
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
        return Result(Status.FAILED, {}, time.time() - start, (message + where)[:2000], job.run_dir)
    finally:
        if cli is not None:
            from callbacks.loggers import finish_loggers

            finish_loggers(cli.trainer)  # each trial its own W&B run
        cli = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
