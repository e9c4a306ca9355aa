"""The backend interface: a ``Searcher`` proposes trials (``ask``) and learns from their results
(``tell``); the study driver owns everything else (store, executor, budget, resume)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ConfigSpace import Configuration, ConfigurationSpace

from core.values import plain

from ..trial import Objective, Proposal, Result, Trial


@dataclass(frozen=True)
class Budget:
    """Training budget in epochs: every trial at ``max`` (``min == max``), or multi-fidelity
    from ``min`` to ``max`` with reduction factor ``eta``."""

    min: float
    max: float
    eta: float = 3.0

    @property
    def multi_fidelity(self) -> bool:
        return self.min < self.max

    def rungs(self) -> list[float]:
        """Successive-halving budgets ``min, min*eta, ...`` up to ``max`` (``max`` included)."""
        out = [float(self.min)]
        while out[-1] * self.eta < self.max * (1 - 1e-9):
            out.append(out[-1] * self.eta)
        if out[-1] < self.max:
            out.append(float(self.max))
        return out


class Searcher(ABC):
    """A search backend. Subclasses take their options as constructor arguments (set in the
    search YAML) and receive the problem in :meth:`setup`; the study calls :meth:`close` when
    it ends."""

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        self.space = space
        self.objectives = objectives
        self.budget = budget
        self.seed = seed
        self.n_trials = n_trials

    @abstractmethod
    def ask(self) -> Proposal | None:
        """The next configuration and budget to run (the study makes it a :class:`Trial` with
        an id and a seed), or None when the backend must wait for running trials first."""

    @abstractmethod
    def tell(self, trial: Trial, result: Result) -> None:
        """Learn from a finished trial (also called on resume for every stored trial, including
        trials this instance never asked for)."""

    def report(self, trial: Trial, step: int, value: float) -> bool:
        """An intermediate value of the first objective; return True to stop the trial early."""
        return False

    def name(self) -> str:
        return type(self).__name__

    def close(self) -> None:
        """Release what the backend holds (temporary files, ...)."""

    # helpers shared by backends

    def config_dict(self, config: Configuration | dict[str, Any]) -> dict[str, Any]:
        """A configuration as plain Python values (no numpy scalars)."""
        return {k: plain(v) for k, v in dict(config).items()}

    def configuration(self, values: dict[str, Any]) -> Configuration:
        """Stored values back into a ConfigSpace Configuration of this space."""
        return Configuration(self.space, values=values)

    def costs(self, result: Result) -> list[float]:
        return result.costs(self.objectives)


class WorstCosts:
    """Tracks the worst finite cost per objective, the stand-in cost of failed trials for
    backends whose models cannot take infinities."""

    def __init__(self, n: int) -> None:
        self.values = [1.0] * n
        self.seen = [False] * n

    def update(self, costs: list[float]) -> None:
        for i, c in enumerate(costs):
            if math.isfinite(c) and (not self.seen[i] or c > self.values[i]):
                self.values[i], self.seen[i] = c, True

    def fill(self, costs: list[float]) -> list[float]:
        return [c if math.isfinite(c) else (w if s else 1.0) for c, w, s in zip(costs, self.values, self.seen)]
