"""Random search: uniform samples of the space, each at the full budget. (Hyperband over
random samples is SMAC's ``HyperbandFacade``: ``backend: {class_path: smac, init_args:
{facade: hyperband}}``.)"""

from __future__ import annotations

from ConfigSpace import ConfigurationSpace

from ..trial import Objective, Proposal, Result, Trial
from .base import Budget, Searcher


class RandomSearcher(Searcher):
    """Uniform random search over the space, every sample at the budget's maximum."""

    def name(self) -> str:
        return "random"

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        space.seed(seed)

    def ask(self) -> Proposal | None:
        budget = self.budget.max if self.budget is not None else None
        return Proposal(self.config_dict(self.space.sample_configuration()), budget)

    def tell(self, trial: Trial, result: Result) -> None:
        """Random search learns nothing."""
