"""Random search: uniform samples of the space, each at the full budget. (Hyperband over
random samples is SMAC's ``HyperbandFacade``: ``backend: {class_path: smac, init_args:
{facade: hyperband}}``.)"""

from __future__ import annotations

from ConfigSpace import ConfigurationSpace

from ..spaces import config_key
from ..trial import Objective, Proposal, Result, Trial
from .base import Budget, Searcher, resume_seed


class RandomSearcher(Searcher):
    """Uniform random search over the space, every sample at the budget's maximum, without
    repeating a configuration it proposed or was told about (on a finite space: sampling
    without replacement until the space is exhausted)."""

    def name(self) -> str:
        return "random"

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        space.seed(seed)
        self._seen: set[str] = set()

    def advance(self, n_asked: int) -> None:
        self.space.seed(resume_seed(self.seed, n_asked))

    def ask(self) -> Proposal | None:
        budget = self.budget.max if self.budget is not None else None
        config = self.sample_unseen(self._seen)
        self._seen.add(config_key(config))
        return Proposal(config, budget)

    def tell(self, trial: Trial, result: Result) -> None:
        """Random search learns nothing but what not to propose again."""
        self._seen.add(config_key(trial.config))
