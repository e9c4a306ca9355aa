"""The ``hyperfd`` backend: HyperFD's ranker proposes configurations for the study's own dataset.

The study's training configuration names the dataset. The backend computes the dataset's
meta-feature there (the client side: its images never leave the study), scores the candidate
pool with a ranker state (trained on a lookup table by ``facenas hyperfd train``, or left by an
earlier study), and proposes B configurations: the top-ranked ones and, by ``explore``, random
others, as Algorithm 1 does. After them it goes on down the ranking, or, with ``then: smac``,
hands over to SMAC with the B picks as SMAC's initial design (a warm start that replaces SMAC's
random one). When the study ends the ranker learns from the results (50 updates, SI
consolidation) and the new state is saved: weights, and per past task a 64-d meta-feature, its
extractor version and its (configuration, result) records; nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from ConfigSpace import ConfigurationSpace

from facenas.search.backends.base import Budget, Searcher
from facenas.search.spaces import config_key, finite_configurations, nas_config, pool
from facenas.search.trial import Objective, Proposal, Result, Status, Trial

SHIPPED = Path(__file__).resolve().parent / "rankers"


def resolve_state(state: str) -> Path:
    """A ranker state file: a path, or the name of one shipped in ``facenas/hyperfd/rankers``."""
    path = Path(state)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{state}.pt"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED.glob("*.pt"))
    raise FileNotFoundError(
        2, f"ranker state not found (a file, or a shipped one: {', '.join(names) or 'none'})", str(state)
    )


def load_state(state: str | Path) -> dict[str, Any]:
    import torch

    # plain containers of tensors, numbers and strings: nothing to unpickle beyond that
    return torch.load(resolve_state(str(state)), map_location="cpu", weights_only=True)


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a killed save never leaves half a state
    return path


class HyperFDSearcher(Searcher):
    """HyperFD's ranker as a search backend.

    Args:
        state: the ranker state to start from (a file from ``facenas hyperfd train`` or an
            earlier study's ``ranker.pt``, or the name of a shipped one).
        save_to: where the updated state goes (default ``<study folder>/ranker.pt``; the
            starting state is never overwritten unless this names it).
        n_picks: B, the configurations chosen by the ranker (4 in the paper).
        explore: share of the B picks drawn at random outside the ranker's top (default: the
            state's: 0 for ``real_photo`` and a state trained with the defaults, 0.5 for
            ``hyperfd_cpu``).
        then: after the B picks, ``ranked`` (go on down the ranking) or ``smac`` (SMAC's
            random-forest BO with the picks as its initial design).
        pool: for an infinite space (``hyperfd_nas``, ``hyperfd_joint``) the candidate pool's size
            and seed, ``{n: 200, seed: 0}``; a finite space's pool is all of it.
        update_steps: ranker updates after the study (default: the state's, 50).
    """

    def __init__(
        self,
        state: str,
        save_to: str | None = None,
        n_picks: int = 4,
        explore: float | None = None,
        then: str = "ranked",
        pool: dict[str, Any] | None = None,
        update_steps: int | None = None,
    ) -> None:
        if then not in ("ranked", "smac"):
            raise ValueError(f"then must be 'ranked' or 'smac', got {then!r}")
        if n_picks < 1:
            raise ValueError(f"n_picks must be at least 1, got {n_picks}")
        self.state_path = state
        self.save_to = save_to
        self.n_picks = n_picks
        self.explore = explore
        self.then = then
        self.pool_spec = dict(pool or {"n": 200, "seed": 0})
        self.update_steps = update_steps
        self._study: Any = None

    def name(self) -> str:
        return "hyperfd" + ("-smac" if self.then == "smac" else "")

    def attach(self, study: Any) -> None:
        self._study = study

    def setup(
        self, space: ConfigurationSpace, objectives: list[Objective], budget: Budget | None, seed: int, n_trials: int
    ) -> None:
        super().setup(space, objectives, budget, seed, n_trials)
        from .methods import HyperFD
        from .online import single_thread

        if self._study is None:
            raise ValueError("the hyperfd backend runs inside a study (it reads the study's dataset)")
        state = load_state(self.state_path)
        if state["space"] != space.name:
            raise ValueError(
                f"ranker state {self.state_path} is for space {state['space']!r}, the study's is {space.name!r}"
            )
        self.method = HyperFD.from_state(state, seed=seed)
        if self.explore is not None:
            self.method.explore = self.explore
        if self.update_steps is not None:
            self.method.steps_per_task = self.update_steps
        grid = finite_configurations(space)
        if grid is None:
            grid = [nas_config(a) for a in pool(int(self.pool_spec["n"]), int(self.pool_spec.get("seed", 0)))]
        self.pool = grid
        self.features = self._dataset_features()
        with single_thread():
            scores = self.method.scores(self.method.client_meta(self.features), self.pool)
        ranked = [self.pool[i] for i in np.argsort(-scores, kind="stable")]
        n_top = min(self.n_picks, round(self.n_picks * (1 - self.method.explore)))
        rest = ranked[n_top:]
        rng = np.random.default_rng(seed)
        explored = [
            rest[int(i)] for i in rng.choice(len(rest), size=min(self.n_picks - n_top, len(rest)), replace=False)
        ]
        self.picks = ranked[:n_top] + explored
        chosen = {config_key(c) for c in self.picks}
        self.observed: dict[str, float] = {}
        # what proposes: the picks, then the rest of the ranking (a list), or SMAC from the picks on
        if self.then == "smac":
            from facenas.search.backends.smac import SMACSearcher

            self._proposer: Searcher = SMACSearcher(initial_configs=self.picks)
        else:
            from facenas.search.backends.list import ListSearcher

            self._proposer = ListSearcher(self.picks + [c for c in ranked if config_key(c) not in chosen])
        self._proposer.setup(space, objectives, budget, seed, n_trials)

    def _dataset_features(self) -> np.ndarray:
        """The study dataset's per-image features (its training images), with the state's extractor."""
        from facenas.training.config import build_datamodule

        from .features import extract_features

        s = self._study
        data = build_datamodule(list(s.base), dict(s.overrides))  # as the study's trials build it
        data.prepare_data()
        data.setup("fit")
        return extract_features(data.splits["train"], self.method.extractor)

    def ask(self) -> Proposal | None:
        return self._proposer.ask()

    def tell(self, trial: Trial, result: Result) -> None:
        self._proposer.tell(trial, result)
        objective = self.objectives[0]
        value = result.values.get(objective.metric)
        if result.status == Status.SUCCESS and value is not None:
            self.observed[config_key(trial.config)] = value if objective.mode == "max" else -value

    def close(self) -> None:
        if getattr(self, "_proposer", None) is not None:
            self._proposer.close()
        if not getattr(self, "observed", None):
            return
        from .online import OnlineTask, TaskData, single_thread

        configs = {config_key(c): c for c in self.pool}
        for key in self.observed:  # a configuration outside the pool (SMAC's), by its key
            configs.setdefault(key, json.loads(key))
        data = TaskData(self._study.name, configs, dict(self.observed), {}, {self.method.extractor: self.features})
        task = OnlineTask(data, budget=len(self.observed))
        task.evaluated.update(self.observed)
        with single_thread():
            self.method.update(task, np.random.default_rng(self.seed))
        save_state(self.method.state(), self.save_to or Path(self._study.run_root) / "ranker.pt")


__all__ = ["HyperFDSearcher", "load_state", "resolve_state", "save_state"]
