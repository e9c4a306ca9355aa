"""The small records a study passes around: objectives, trials and their results."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """A trial's state in the store."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"      # raised, ran out of memory, or diverged (non-finite loss)
    PRUNED = "pruned"      # stopped early by the backend on an intermediate report


@dataclass(frozen=True)
class Objective:
    """A logged metric to optimise: ``metric`` (e.g. ``val/ap50``) and ``mode`` (min or max)."""

    metric: str
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"objective mode must be 'min' or 'max', got {self.mode!r} for {self.metric}")

    def cost(self, value: float | None) -> float:
        """The value as a cost to minimise (max objectives are negated; missing is +inf)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        return float(value) if self.mode == "min" else -float(value)


@dataclass
class Trial:
    """One configuration to evaluate at one budget (epochs), as a backend asked for it."""

    id: int
    config: dict[str, Any]
    budget: float | None = None
    seed: int = 0
    info: Any = field(default=None, repr=False, compare=False)  # the backend's own handle


@dataclass
class Result:
    """What a trial produced: objective values by metric name, status, cost in seconds, error."""

    status: Status
    values: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    error: str | None = None
    run_dir: str | None = None
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # time inside Trainer.fit (in-process trials; not stored)

    def costs(self, objectives: list[Objective]) -> list[float]:
        """Objective values as costs (minimised); failed trials cost +inf."""
        if self.status != Status.SUCCESS:
            return [math.inf] * len(objectives)
        return [o.cost(self.values.get(o.metric)) for o in objectives]
