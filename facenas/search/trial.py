"""The small records a study passes around: objectives, proposals, trials and their results."""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """A trial's state in the store."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"  # raised, ran out of memory, or diverged (non-finite loss)
    PRUNED = "pruned"  # stopped early by the backend on an intermediate value


@dataclass(frozen=True)
class Objective:
    """A logged metric to optimise.

    Args:
        metric: the logged name, e.g. ``val/ap50``.
        mode: ``min`` or ``max``.
        allow_nonfinite: whether an infinite value is a legitimate result (a fairness ratio whose
            reference group is perfect is infinite) instead of a failed trial. NaN (an undefined
            metric) always fails the trial.
        reduce: which logged value is the trial's: ``last`` (the end of training) or ``best``
            (the best over the run, the value of the checkpoint a ``ModelCheckpoint`` on this
            metric keeps: HyperFD's protocol picks the best validation checkpoint).
    """

    metric: str
    mode: str = "min"
    allow_nonfinite: bool = False
    reduce: str = "last"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"objective mode must be 'min' or 'max', got {self.mode!r} for {self.metric}")
        if self.reduce not in ("last", "best"):
            raise ValueError(f"objective reduce must be 'last' or 'best', got {self.reduce!r} for {self.metric}")

    def cost(self, value: float | None) -> float:
        """The value as a cost to minimise (max objectives are negated; missing is +inf)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        return float(value) if self.mode == "min" else -float(value)


@dataclass(frozen=True)
class Proposal:
    """What a backend asks to evaluate: a configuration at a budget (epochs; None: the
    study's), and the backend's own handle to recognise it when told the result."""

    config: dict[str, Any]
    budget: float | None = None
    info: Any = field(default=None, repr=False, compare=False)
    backend_seed: int | None = None  # the backend's own seed of this evaluation (SMAC), kept for resume


@dataclass(frozen=True)
class Trial:
    """One configuration evaluated at one budget, as the study runs it: its id in the store
    and the seed it trains with (``seed_everything``)."""

    id: int
    config: dict[str, Any]
    budget: float | None = None
    seed: int = 0
    info: Any = field(default=None, repr=False, compare=False)  # the backend's handle (None after a resume)
    backend_seed: int | None = None


@dataclass
class Result:
    """What a trial produced: objective values by metric name, status, cost in seconds, error."""

    status: Status
    values: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    error: str | None = None
    run_dir: str | None = None
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # time inside the training command (in-process trials; not stored)
    # stopped by SIGTERM / SIGINT (the study's or its own): not a result, the trial runs again (not stored)
    interrupted: bool = False

    def costs(self, objectives: list[Objective]) -> list[float]:
        """Objective values as costs (minimised); failed trials cost +inf."""
        if self.status != Status.SUCCESS:
            return [math.inf] * len(objectives)
        return [o.cost(self.values.get(o.metric)) for o in objectives]


def outcome(values: dict[str, float], objectives: list[Objective]) -> tuple[Status, str | None]:
    """A finished training's status from its objective values: failed when one was never
    logged, is NaN (undefined: never a value, whatever ``allow_nonfinite`` says), or is infinite
    where its objective does not allow that."""
    missing = [o.metric for o in objectives if o.metric not in values]
    if missing:
        return Status.FAILED, f"objective(s) never logged: {', '.join(missing)}"
    undefined = [o.metric for o in objectives if math.isnan(values[o.metric])]
    if undefined:
        return Status.FAILED, (
            f"undefined objective(s), logged as NaN: {', '.join(undefined)} (e.g. an AP of a group without a "
            "counted face, a gap with fewer than two measured groups, a fairness metric with one group)"
        )
    bad = [o.metric for o in objectives if not math.isfinite(values[o.metric]) and not o.allow_nonfinite]
    if bad:
        return Status.FAILED, f"non-finite objective(s): {', '.join(bad)}"
    return Status.SUCCESS, None


def interrupted(reason: str, duration: float = 0.0, run_dir: str | None = None) -> Result:
    """What a trial stopped by a signal returns: never recorded, it runs again."""
    return Result(Status.FAILED, {}, duration, reason, run_dir, interrupted=True)


def crashed(exc: BaseException, duration: float = 0.0, run_dir: str | None = None) -> Result:
    """The failed result of a trial that raised: the exception and where it was raised."""
    message = f"{type(exc).__name__}: {exc}".strip()
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return Result(Status.FAILED, {}, duration, (message + where)[:2000], run_dir)
