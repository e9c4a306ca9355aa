"""Optuna backends: TPE (single or multi-objective, i.e. MOTPE), NSGA-II, random; with
Hyperband / successive-halving / median pruning on intermediate validation values."""

from __future__ import annotations

from typing import Any

from ConfigSpace import (
    CategoricalHyperparameter,
    ConfigurationSpace,
    EqualsCondition,
    InCondition,
    OrdinalHyperparameter,
    UniformFloatHyperparameter,
    UniformIntegerHyperparameter,
)

from facenas.core.values import plain

from ..trial import Objective, Proposal, Result, Status, Trial
from .base import Budget, Searcher, resume_seed

SAMPLERS = ("tpe", "motpe", "nsga2", "random")
PRUNERS = (None, "hyperband", "asha", "median")


def distribution(hp) -> Any:
    """The Optuna distribution of a ConfigSpace hyperparameter."""
    import optuna.distributions as od

    if isinstance(hp, CategoricalHyperparameter):
        return od.CategoricalDistribution([plain(c) for c in hp.choices])
    if isinstance(hp, OrdinalHyperparameter):
        return od.CategoricalDistribution([plain(c) for c in hp.sequence])
    if isinstance(hp, UniformFloatHyperparameter):
        return od.FloatDistribution(float(hp.lower), float(hp.upper), log=bool(hp.log))
    if isinstance(hp, UniformIntegerHyperparameter):
        return od.IntDistribution(int(hp.lower), int(hp.upper), log=bool(hp.log))
    raise ValueError(f"hyperparameter {hp.name!r} of type {type(hp).__name__} has no Optuna equivalent")


def suggest(trial: Any, name: str, dist: Any) -> Any:
    """Sample ``name`` from ``dist`` through the trial's public API."""
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, od.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log)


def active(space: ConfigurationSpace, name: str, values: dict[str, Any]) -> bool:
    """Whether ``name``'s conditions hold for the parent values chosen so far."""
    for cond in space.conditions:
        if getattr(cond, "child", None) is None or cond.child.name != name:
            continue
        parent = values.get(cond.parent.name)
        if isinstance(cond, EqualsCondition) and parent != plain(cond.value):
            return False
        if isinstance(cond, InCondition) and parent not in [plain(v) for v in cond.values]:
            return False
    return True


class OptunaSearcher(Searcher):
    """Optuna through ``study.ask`` / ``study.tell``.

    Args:
        sampler: ``tpe`` (MOTPE when there are several objectives), ``motpe`` (the same),
            ``nsga2`` or ``random``.
        pruner: None, ``hyperband``, ``asha`` (successive halving) or ``median``; it acts on the
            intermediate validation values of the first objective between the budget's
            ``min`` and ``max`` epochs (single objective only: Optuna cannot prune
            multi-objective studies).
        n_startup_trials: random trials before TPE models the results.
        population_size: NSGA-II's population.
    """

    def __init__(
        self, sampler: str = "tpe", pruner: str | None = None, n_startup_trials: int = 10, population_size: int = 20
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"Optuna sampler must be one of {SAMPLERS}, got {sampler!r}")
        if pruner not in PRUNERS:
            raise ValueError(f"Optuna pruner must be one of {PRUNERS}, got {pruner!r}")
        self.sampler_name = sampler
        self.pruner_name = pruner
        self.n_startup_trials = n_startup_trials
        self.population_size = population_size

    def name(self) -> str:
        return f"optuna-{self.sampler_name}" + (f"-{self.pruner_name}" if self.pruner_name else "")

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        import optuna

        if self.pruner_name and len(objectives) > 1:
            raise ValueError("Optuna cannot prune multi-objective studies; remove the pruner or use one objective")
        sampler = self._sampler(seed)
        low = int(budget.min) if budget is not None else 1
        high = int(budget.max) if budget is not None else 1
        eta = int(budget.eta) if budget is not None else 3
        pruner = {
            None: optuna.pruners.NopPruner(),
            "hyperband": optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high, reduction_factor=eta),
            "asha": optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=eta),
            "median": optuna.pruners.MedianPruner(n_warmup_steps=low),
        }[self.pruner_name]
        self.study = optuna.create_study(
            directions=["minimize" if o.mode == "min" else "maximize" for o in objectives],
            sampler=sampler,
            pruner=pruner,
        )
        self.distributions = {hp.name: distribution(hp) for hp in space.values()}

    def _sampler(self, seed: int) -> Any:
        import optuna

        if self.sampler_name in ("tpe", "motpe"):
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if self.sampler_name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)
        return optuna.samplers.RandomSampler(seed=seed)

    def advance(self, n_asked: int) -> None:
        """A seeded Optuna sampler would draw its first (random start-up) samples again: it
        continues from a seed derived from (seed, proposals made), the told trials intact."""
        self.study.sampler = self._sampler(resume_seed(self.seed, n_asked))

    def ask(self) -> Proposal | None:
        trial = self.study.ask()
        values: dict[str, Any] = {}
        for hp in self.space.values():  # parents come before children
            if active(self.space, hp.name, values):
                values[hp.name] = suggest(trial, hp.name, self.distributions[hp.name])
        budget = self.budget.max if self.budget is not None else None
        return Proposal({k: plain(v) for k, v in values.items()}, budget, trial)

    def should_prune(self, trial: Trial, step: int, value: float) -> bool:
        if trial.info is None or self.pruner_name is None:
            return False
        trial.info.report(value, step)
        return trial.info.should_prune()

    def tell(self, trial: Trial, result: Result) -> None:
        import optuna
        from optuna.trial import TrialState

        values = [result.values.get(o.metric) for o in self.objectives]
        finished = result.status == Status.SUCCESS and all(v is not None and v == v for v in values)
        state = (
            TrialState.COMPLETE
            if finished
            else (TrialState.PRUNED if result.status == Status.PRUNED else TrialState.FAIL)
        )
        if trial.info is None:  # resume: a trial this instance never asked for
            frozen = optuna.trial.create_trial(
                params=trial.config,
                distributions={k: self.distributions[k] for k in trial.config},
                state=state,
                values=[float(v) for v in values] if finished else None,
                intermediate_values={int(s): float(v) for s, v in result.intermediate},
            )
            self.study.add_trial(frozen)
            return
        if finished:
            self.study.tell(trial.info, [float(v) for v in values])
        else:
            self.study.tell(trial.info, state=state)
