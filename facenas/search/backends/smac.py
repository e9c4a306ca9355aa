"""SMAC3 backends: Bayesian optimisation (``HyperparameterOptimizationFacade``), multi-fidelity
Hyperband with a model (``MultiFidelityFacade``), plain Hyperband and random search
(``HyperbandFacade``, ``RandomFacade``); multi-objective through ParEGO."""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from ConfigSpace import ConfigurationSpace

from ..trial import Objective, Proposal, Result, Status, Trial
from .base import Budget, Searcher, SpaceExhausted, WorstCosts

FACADES = ("hpo", "mf", "hyperband", "random")


def _sequential():
    """Fit SMAC's random forest without joblib threads: for the few hundred points of a study
    the thread hand-offs (joblib sleeps while polling them) cost ~20x the fitting itself."""
    from joblib import parallel_config

    return parallel_config(backend="sequential")


def _fast_forest(scenario: Any) -> Any:
    """The facade's random forest (same settings as ``HyperparameterOptimizationFacade.get_model``)
    without its ``max_leaf_nodes=2**20`` and ``n_jobs=-1``: with them scikit-learn switches to its
    best-first tree builder and joblib workers, and a fit on a hundred points takes ~1 s instead
    of ~10 ms. Without a leaf limit the trees are the same depth-first trees."""
    from smac.model.random_forest.random_forest import RandomForest

    return RandomForest(
        scenario.configspace,
        log_y=False,
        n_trees=10,
        bootstrapping=True,
        ratio_features=1.0,
        min_samples_split=2,
        min_samples_leaf=1,
        max_depth=2**20,
        max_leaf_nodes=None,
        n_jobs=1,
        seed=scenario.seed,
        instance_features=scenario.instance_features,
    )


def _unused_target(config: Any, seed: int = 0, budget: float | None = None) -> float:
    raise RuntimeError("facenas drives SMAC through ask/tell; the target function is never called")


class SMACSearcher(Searcher):
    """SMAC3 through its ask/tell interface.

    Args:
        facade: ``hpo`` (random-forest BO), ``mf`` (BO + Hyperband over epochs, as FR-NAS),
            ``hyperband`` (random sampling + Hyperband) or ``random``.
        eta: Hyperband's reduction factor (default: the study budget's ``eta``).
        n_initial: initial-design size (default: SMAC's).
        incumbent_selection: the Hyperband intensifier's incumbent rule. With several objectives
            and budgets SMAC's default (``highest_observed_budget``) can fail (SMAC issue 1050);
            ``highest_budget`` works and is the default here.
        multi_objective: ``parego`` (the only option; ignored for a single objective).
        initial_configs: configurations that replace SMAC's random initial design (a warm
            start, e.g. the ``hyperfd`` ranker's picks); with ``n_initial`` that many random
            ones are added.
    """

    def __init__(
        self,
        facade: str = "hpo",
        eta: float | None = None,
        n_initial: int | None = None,
        incumbent_selection: str = "highest_budget",
        multi_objective: str = "parego",
        initial_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        if facade not in FACADES:
            raise ValueError(f"SMAC facade must be one of {FACADES}, got {facade!r}")
        if multi_objective != "parego":
            raise ValueError(f"multi_objective must be 'parego', got {multi_objective!r}")
        self.facade = facade
        self.eta = eta
        self.n_initial = n_initial
        self.incumbent_selection = incumbent_selection
        self.initial_configs = [dict(c) for c in initial_configs or []]

    def name(self) -> str:
        return f"smac-{self.facade}"

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        from smac import (
            HyperbandFacade,
            HyperparameterOptimizationFacade,
            MultiFidelityFacade,
            RandomFacade,
            Scenario,
        )
        from smac.multi_objective.parego import ParEGO

        multi = len(objectives) > 1
        fidelity = self.facade in ("mf", "hyperband")
        if fidelity and (budget is None or not budget.multi_fidelity):
            raise ValueError(f"the SMAC {self.facade!r} facade needs a multi-fidelity budget (min < max)")
        self._outdir = Path(tempfile.mkdtemp(prefix="facenas-smac-"))
        # SMAC insists on an output folder; the study's store is the record, so the folder is
        # scratch, removed by close() or, for a searcher nobody closes, when it is collected
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._outdir, True)
        scenario = Scenario(
            space,
            name="facenas",
            output_directory=self._outdir,
            deterministic=True,
            objectives=[o.metric for o in objectives] if multi else "cost",
            n_trials=max(n_trials, 1) * 10,
            seed=seed,
            min_budget=budget.min if fidelity else None,
            max_budget=budget.max if fidelity else None,
        )
        facade_cls = {
            "hpo": HyperparameterOptimizationFacade,
            "mf": MultiFidelityFacade,
            "hyperband": HyperbandFacade,
            "random": RandomFacade,
        }[self.facade]
        kwargs: dict[str, Any] = {"overwrite": True, "logging_level": logging.ERROR}
        if fidelity:
            kwargs["intensifier"] = facade_cls.get_intensifier(
                scenario, eta=int(self.eta or budget.eta), incumbent_selection=self.incumbent_selection
            )
        if multi:
            kwargs["multi_objective_algorithm"] = ParEGO(scenario)
        if self.facade in ("hpo", "mf"):
            kwargs["model"] = _fast_forest(scenario)
        if (self.n_initial is not None or self.initial_configs) and self.facade in ("hpo", "mf"):
            # given configurations replace SMAC's random initial design (a warm start), unless
            # n_initial asks for random ones besides them
            kwargs["initial_design"] = facade_cls.get_initial_design(
                scenario,
                n_configs=self.n_initial if self.n_initial is not None else 0,
                additional_configs=[self.configuration(c) for c in self.initial_configs],
            )
        elif self.initial_configs:
            raise ValueError(f"initial_configs need the SMAC 'hpo' or 'mf' facade, not {self.facade!r}")
        self.smac = facade_cls(scenario, _unused_target, **kwargs)
        self._worst = WorstCosts(len(objectives))

    def ask(self) -> Proposal | None:
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        try:
            with _sequential():
                info = self.smac.ask()
        except ConfigurationSpaceExhaustedException:
            raise SpaceExhausted("SMAC found no configuration it has not evaluated") from None
        return Proposal(self.config_dict(info.config), info.budget, info, info.seed)

    def tell(self, trial: Trial, result: Result) -> None:
        from smac.runhistory.dataclasses import TrialInfo, TrialValue
        from smac.runhistory.enumerations import StatusType

        info = trial.info
        if info is None:  # a stored trial this instance never asked for (resume)
            info = TrialInfo(config=self.configuration(trial.config), seed=trial.backend_seed, budget=trial.budget)
        costs = self.costs(result)
        self._worst.update(costs)
        ok = result.status == Status.SUCCESS and all(c != float("inf") for c in costs)
        value = self._worst.fill(costs)
        status = StatusType.SUCCESS if ok else StatusType.CRASHED
        with _sequential():
            self.smac.tell(
                info,
                TrialValue(cost=value if len(value) > 1 else value[0], time=result.duration, status=status),
                save=False,
            )

    def close(self) -> None:
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()
