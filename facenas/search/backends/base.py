"""The backend interface: a ``Searcher`` proposes trials (``ask``) and learns from their results
(``tell``); the study driver owns everything else (store, executor, budget, resume)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ConfigSpace import Configuration, ConfigurationSpace

from facenas.core.values import plain

from ..spaces import config_key, finite_configurations
from ..trial import Objective, Proposal, Result, Trial


def resume_seed(seed: int, n_asked: int) -> int:
    """The seed a resumed study's sampler continues with: the study's own for a new study, else
    a deterministic function of (seed, proposals already made), so that it draws a stream the
    earlier runs did not."""
    if n_asked == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, n_asked]).generate_state(1)[0] % (2**31 - 1))


class SpaceExhausted(Exception):
    """Raised by :meth:`Searcher.ask` when the backend has no configuration left to propose."""


@dataclass(frozen=True)
class Budget:
    """Training budget in epochs: every trial at ``max`` (``min == max``), or multi-fidelity
    from ``min`` to ``max`` with reduction factor ``eta``."""

    min: float
    max: float
    eta: float = 3.0

    def __post_init__(self) -> None:
        # a trial trains round(budget) epochs: below 1, it would train none and log nothing
        if not self.min >= 1:
            raise ValueError(
                f"budget: a trial needs at least 1 epoch (it trains round(budget) epochs), got {self.min:g}"
            )
        if not self.max >= self.min:
            raise ValueError(f"budget: max {self.max:g} is below min {self.min:g}")
        if self.min < self.max and not self.eta > 1:
            raise ValueError(f"budget: eta must be above 1 (each rung multiplies the budget by it), got {self.eta:g}")

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

    def attach(self, study: Any) -> None:
        """Called by the study before :meth:`setup` with its settings (training YAMLs and
        overrides, run folder), for a backend that needs the data (``hyperfd``); others ignore it."""

    @abstractmethod
    def ask(self) -> Proposal | None:
        """The next configuration and budget to run (the study makes it a :class:`Trial` with
        an id and a seed), or None when the backend must wait for running trials first."""

    @abstractmethod
    def tell(self, trial: Trial, result: Result) -> None:
        """Learn from a finished trial (also called on resume for every stored trial, including
        trials this instance never asked for)."""

    def advance(self, n_asked: int) -> None:
        """Called once when a study resumes, after every stored trial was told: earlier runs of
        the study made ``n_asked`` proposals. A backend whose proposals come from a seeded
        random stream moves past them (or reseeds from ``(seed, n_asked)``), so that a resumed
        study never draws its first configurations again. Default: nothing to do (backends
        that avoid what they were told, like SMAC)."""

    def should_prune(self, trial: Trial, step: int, value: float) -> bool:
        """Called with each intermediate value of the first objective (``step``: the epoch);
        True stops the trial early (pruned). Default: never."""
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

    def sample_unseen(self, seen: set[str], tries: int = 200) -> dict[str, Any]:
        """A uniform sample of the space whose :func:`config_key` is not in ``seen``: rejection
        sampling, then, for a finite space, a seeded draw among the configurations left.
        Raises :class:`SpaceExhausted` when a finite space has none left."""
        config: dict[str, Any] = {}
        for _ in range(tries):
            config = self.config_dict(self.space.sample_configuration())
            if config_key(config) not in seen:
                return config
        if not hasattr(self, "_finite"):
            self._finite = finite_configurations(self.space)
        if self._finite is None:  # an infinite space where 200 samples collided: accept the repeat
            return config
        left = [c for c in self._finite if config_key(c) not in seen]
        if not left:
            raise SpaceExhausted(f"all {len(self._finite)} configurations of the space were proposed")
        return left[int(self.space.random.randint(len(left)))]


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
