"""The ``list`` backend: the configurations of a given list, in order, each once (a lookup
table's candidate pool; the HyperFD backend's ranking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ConfigSpace import Configuration, ConfigurationSpace

from ..spaces import config_key
from ..trial import Objective, Proposal, Result, Trial
from .base import Budget, Searcher, SpaceExhausted


class ListSearcher(Searcher):
    """Proposes ``configs`` (or the configurations of a JSON/YAML list in ``file``) in their
    order, each at the budget's maximum, skipping those the study already holds; ends the study
    when the list is used up. Every configuration must be one of the space's (checked at setup,
    the first bad one named by its position)."""

    def __init__(self, configs: list[dict[str, Any]] | None = None, file: str | None = None) -> None:
        if (configs is None) == (file is None):
            raise ValueError("the list backend takes configs or file, exactly one of them")
        if file is not None:
            import yaml

            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(2, "configuration list file not found", str(path))
            configs = yaml.safe_load(path.read_text())
            if not isinstance(configs, list):
                raise ValueError(f"{path}: a configuration list file is a list of configurations")
        self.configs = [dict(c) for c in configs or []]

    def name(self) -> str:
        return "list"

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        for i, config in enumerate(self.configs):
            try:
                Configuration(space, values=config)
            except Exception as exc:  # ConfigSpace raises several types for illegal values
                raise ValueError(f"listed configuration {i} is not one of space {space.name!r}: {exc}") from None
        self._seen: set[str] = set()
        self._next = 0

    def ask(self) -> Proposal | None:
        while self._next < len(self.configs):
            config = self.configs[self._next]
            self._next += 1
            if config_key(config) not in self._seen:
                self._seen.add(config_key(config))
                return Proposal(config, self.budget.max if self.budget is not None else None)
        raise SpaceExhausted(f"all {len(self.configs)} configurations of the list were proposed")

    def tell(self, trial: Trial, result: Result) -> None:
        self._seen.add(config_key(trial.config))
