"""Random search: uniform samples of the space at the full budget, or Hyperband over epochs
through SMAC's ``HyperbandFacade`` (random sampling, successive halving brackets)."""
from __future__ import annotations

from ConfigSpace import ConfigurationSpace

from ..trial import Objective, Result, Trial
from .base import Budget, Searcher
from .smac import SMACSearcher


class RandomSearcher(Searcher):
    """Uniform random search.

    Args:
        hyperband: run Hyperband brackets over the budget's epochs (SMAC's ``HyperbandFacade``)
            instead of evaluating every sample at the full budget.
        eta: Hyperband's reduction factor (default: the budget's).
    """

    def __init__(self, hyperband: bool = False, eta: float | None = None) -> None:
        self.hyperband = hyperband
        self.eta = eta
        self._hb: SMACSearcher | None = None

    def name(self) -> str:
        return "random-hyperband" if self.hyperband else "random"

    def setup(self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        space.seed(seed)
        if self.hyperband:
            self._hb = SMACSearcher(facade="hyperband", eta=self.eta)
            self._hb.setup(space, objectives, budget, seed, n_trials)

    def ask(self) -> Trial | None:
        if self._hb is not None:
            return self._hb.ask()
        config = self.space.sample_configuration()
        budget = self.budget.max if self.budget is not None else None
        return Trial(id=-1, config=self.config_dict(config), budget=budget, seed=self.seed)

    def tell(self, trial: Trial, result: Result) -> None:
        if self._hb is not None:
            self._hb.tell(trial, result)
