"""MO-ASHA: asynchronous successive halving whose promotions rank a rung's results by
non-dominated sorting (Schmucker et al.), FR-NAS's second multi-fidelity baseline.

Written here rather than taken from syne-tune: syne-tune's core package pulls in xgboost,
statsmodels and pandas, and its MOASHA is a scheduler that expects syne-tune's own tuner loop
(stopping running trials on per-epoch values). As a promotion-based searcher on the driver's
ask/tell it resumes from the study store like every other backend.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from ConfigSpace import ConfigurationSpace

from facenas.core.pareto import ranking

from ..spaces import config_key
from ..trial import Objective, Proposal, Result, Status, Trial
from .base import Budget, Searcher, SpaceExhausted, resume_seed


class MOASHA(Searcher):
    """Asynchronous successive halving with multi-objective promotions.

    Budgets are the rungs ``min, min*eta, ...`` of the study budget. When a worker is free, the
    highest rung with a promotable configuration wins: among a rung's finished results, the top
    ``floor(n / eta)`` by non-dominated sorting (crowding distance breaks ties) go up one rung;
    otherwise a new random configuration (one never proposed before) starts at the lowest
    rung. Failed trials rank last.

    Args:
        eta: reduction factor (default: the budget's).
    """

    def __init__(self, eta: float | None = None) -> None:
        self.eta = eta

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        if budget is None or not budget.multi_fidelity:
            raise ValueError("MO-ASHA needs a multi-fidelity budget (min < max)")
        self._eta = float(self.eta or budget.eta)
        self.rungs = Budget(budget.min, budget.max, self._eta).rungs()
        space.seed(seed)
        self._results: dict[int, dict[str, tuple[dict, list[float]]]] = defaultdict(
            dict
        )  # rung -> key -> (config, costs)
        self._promoted: dict[int, set[str]] = defaultdict(set)
        self._started: set[str] = set()  # configurations proposed or told at the lowest rung

    def advance(self, n_asked: int) -> None:
        self.space.seed(resume_seed(self.seed, n_asked))

    @staticmethod
    def _key(config: dict) -> str:
        return config_key(config)

    def _rung(self, budget: float | None) -> int:
        return min(range(len(self.rungs)), key=lambda i: abs(self.rungs[i] - (budget or self.rungs[0])))

    def ask(self) -> Proposal | None:
        for rung in range(len(self.rungs) - 2, -1, -1):
            done = self._results[rung]
            k = int(len(done) // self._eta)
            if k == 0:
                continue
            keys = list(done)
            costs = np.array([done[key][1] for key in keys], dtype=float)
            costs = np.where(
                np.isfinite(costs),
                costs,
                np.nanmax(np.where(np.isfinite(costs), costs, np.nan), axis=0) + 1.0
                if np.isfinite(costs).any()
                else 1.0,
            )
            for index in ranking(costs)[:k]:
                key = keys[index]
                if key not in self._promoted[rung] and math.isfinite(max(done[key][1])):
                    self._promoted[rung].add(key)
                    return Proposal(dict(done[key][0]), self.rungs[rung + 1])
        try:
            config = self.sample_unseen(self._started)
        except SpaceExhausted:
            return None  # nothing new to start: wait for results that allow promotions
        self._started.add(self._key(config))
        return Proposal(config, self.rungs[0])

    def tell(self, trial: Trial, result: Result) -> None:
        rung = self._rung(trial.budget)
        costs = self.costs(result) if result.status == Status.SUCCESS else [math.inf] * len(self.objectives)
        key = self._key(trial.config)
        self._results[rung][key] = (trial.config, costs)
        self._started.add(key)
        if rung > 0:  # on resume, a result at a higher rung means it was promoted from below
            self._promoted[rung - 1].add(key)
