"""The study driver: ask -> base YAML + overrides -> train -> read objectives -> record -> tell.

The SQLite store is the truth. Starting a study whose store exists resumes it: a fresh backend
is told every finished trial again and moves its sampler past the proposals already made,
trials that were in flight when the study stopped are run again under their own ids, and
nothing finished is lost or repeated: a proposal of a configuration the store already holds at
the same budget is answered with the stored result and the backend is asked again; a finite
space that is exhausted ends the study with a message.

SIGTERM or SIGINT stops the study within seconds (:mod:`facenas.core.signals`): the trial in flight
stops between two batches (subprocess and Dask trials are terminated), is left in the store to
run again on resume, and :meth:`Study.run` raises :class:`facenas.core.errors.Interrupted`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from facenas.core import signals
from facenas.core.errors import Interrupted, UserError

from .backends import BACKENDS, Budget, Searcher, SpaceExhausted, create_searcher
from .executors import Executor, FunctionExecutor, create_executor
from .runner import TrialJob, csv_logger
from .spaces import (
    apply_mapping,
    check_mapping,
    check_training_keys,
    config_key,
    finite_configurations,
    load_space,
)
from .store import StudyStore
from .trial import Objective, Proposal, Result, Status, Trial

# settings that define a study: resuming with different values would mix incompatible trials
_IDENTITY = ("space", "objectives", "mapping", "base", "budget", "backend", "seed")
# proposals in a row of configurations the store holds before the space counts as exhausted
MAX_REPEATS = 100
# times a trial stopped by a signal the study did not get (a worker's shutdown) runs again
MAX_RERUNS = 2
# seconds the running trials get to come back after a stop (their children: SIGTERM, then SIGKILL)
STOP_GRACE = 30.0


@dataclass
class StudySettings:
    """A study, as written in a search YAML (see ``configs/search/``)."""

    name: str
    space: str
    objectives: list[Objective]
    base: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    backend: Any = "random"
    executor: Any = "inprocess"
    budget: Budget | None = None
    budget_key: str = "trainer.max_epochs"
    n_trials: int = 20
    walltime: float | None = None
    seed: int = 0
    storage: str | None = None
    runs_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    reference_point: list[float] | None = None
    wandb: dict[str, Any] | None = None
    report: bool = True

    def __post_init__(self) -> None:
        self.objectives = [o if isinstance(o, Objective) else Objective(**o) for o in self.objectives]
        if isinstance(self.budget, dict):
            self.budget = Budget(**self.budget)
        elif isinstance(self.budget, (int, float)):
            self.budget = Budget(float(self.budget), float(self.budget))
        if not self.objectives:
            raise ValueError("a study needs at least one objective")
        for base in self.base:
            if not Path(base).is_file():
                raise FileNotFoundError(2, "base training config not found", base)

    @property
    def store_path(self) -> Path:
        return Path(self.storage) if self.storage else Path(self.run_root) / "study.sqlite"

    @property
    def run_root(self) -> Path:
        return Path(self.runs_dir or f"runs/search/{self.name}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = [asdict(o) for o in self.objectives]
        d["budget"] = asdict(self.budget) if self.budget is not None else None
        return d


def _backend_identity(spec: Any) -> Any:
    """A backend spec with its registered name in place of a deprecated alias (``pool`` ->
    ``list``), so that a study stored under the old name resumes."""
    if isinstance(spec, str):
        return BACKENDS.canonical(spec)
    if isinstance(spec, dict) and isinstance(spec.get("class_path"), str):
        return {**spec, "class_path": BACKENDS.canonical(spec["class_path"])}
    return spec


class Study:
    """Runs a study to ``n_trials`` finished trials (or ``walltime`` seconds).

    Args:
        settings: the study.
        objective: instead of training, a function ``Trial -> Result`` (a lookup table or a replay).
        console: where progress lines go (default: a rich console).
        quiet: no progress lines, warnings or report.
        on_record: called with every trial the study records as finished (a caller's own
            progress display, e.g. the lookup-table builder's).
    """

    def __init__(
        self,
        settings: StudySettings,
        objective: Callable[[Trial], Result] | None = None,
        console: Console | None = None,
        quiet: bool = False,
        on_record: Callable[[Trial, Result], None] | None = None,
    ) -> None:
        self.settings = settings
        self.objective = objective
        self.console = console or Console()
        self.quiet = quiet
        self.on_record = on_record
        self.exhausted: str | None = None  # why the study ended before n_trials, when it did

    def check(self) -> None:
        """Refuse, before anything runs, a mapping that names no parameter of the space or a key
        that the base training config does not take (the trial would train with the default
        while the reports show the sampled value)."""
        s = self.settings
        if self.objective is not None:  # a tabular objective: no training config
            return
        unused = check_mapping(s.mapping, load_space(s.space, s.seed))
        if unused and not self.quiet:
            self.console.print(
                f"[yellow]warning:[/] space parameter(s) {', '.join(unused)} map onto no training key: "
                "their sampled values do not change the trials",
                highlight=False,
            )
        keys = {key.split("|")[0].strip(): "mapping key" for key in s.mapping}
        if s.budget is not None:
            keys.setdefault(s.budget_key, "budget_key")
        config = check_training_keys(keys, s.base, s.overrides)
        if s.budget is None:
            trainer = config.get("trainer") or {}
            for key in ("max_epochs", "max_steps"):
                if trainer.get(key) == 0:
                    raise UserError(
                        f"trainer.{key} is 0 in the study's training config: a trial would train "
                        "nothing, so its objectives would never be logged (give a budget or a positive value)"
                    )

    def _budget(self, proposal: Proposal) -> float | None:
        s = self.settings
        return proposal.budget if proposal.budget is not None else (s.budget.max if s.budget is not None else None)

    @staticmethod
    def _key(config: dict[str, Any], budget: float | None) -> tuple[str, float | None]:
        return config_key(config), None if budget is None else round(float(budget), 6)

    def _check_identity(self, store: StudyStore) -> None:
        saved = store.get_meta("settings")
        mine = self.settings.as_dict()
        if saved is None:
            store.set_meta("settings", mine)
            return
        saved = {**saved, "objectives": [asdict(Objective(**o)) for o in saved.get("objectives") or []]}  # new fields
        # a backend named by a deprecated alias in either (a store written before a rename) is the same backend
        compared = [({**d, "backend": _backend_identity(d.get("backend"))}) for d in (saved, mine)]
        changed = [k for k in _IDENTITY if compared[0].get(k) != compared[1].get(k)]
        if changed:
            raise ValueError(
                f"{store.path} holds study {saved['name']!r} with different {', '.join(changed)}; "
                "resume it with the same settings or give the new study another name"
            )
        store.set_meta("settings", mine)  # n_trials, walltime, executor may change between runs

    def _trial(self, proposal: Proposal, trial_id: int) -> Trial:
        """The trial of a proposal: its id, the study's budget when the backend gave none, and
        the seed it trains with (``seed_everything`` from the overrides, else study seed + id)."""
        s = self.settings
        budget = self._budget(proposal)
        seed = int(s.overrides.get("seed_everything", s.seed + trial_id))
        return Trial(trial_id, proposal.config, budget, seed, proposal.info, proposal.backend_seed)

    def _job(self, trial: Trial, searcher: Searcher) -> TrialJob:
        s = self.settings
        if self.objective is not None:
            return TrialJob(trial, s.objectives)
        overrides = dict(s.overrides)
        overrides.update(apply_mapping(trial.config, s.mapping))
        if trial.budget is not None:
            overrides[s.budget_key] = int(round(trial.budget))
        overrides["seed_everything"] = trial.seed
        run_dir = s.run_root / f"trial_{trial.id:04d}"
        if s.wandb is not None:
            overrides["trainer.logger"] = [
                csv_logger(run_dir),
                {
                    "class_path": "facenas.callbacks.WandbLogger",
                    "init_args": {
                        **s.wandb,
                        "save_dir": str(run_dir),
                        "group": s.name,
                        "name": f"{s.name}-trial-{trial.id}",
                        "config": {**trial.config, "backend": searcher.name(), "budget": trial.budget},
                    },
                },
            ]
        return TrialJob(trial, s.objectives, list(s.base), overrides, str(run_dir))

    def run(self) -> StudyStore:
        """Run (or resume) the study; returns its store. Raises :class:`facenas.core.errors.Interrupted`
        when SIGTERM or SIGINT stopped it."""
        s = self.settings
        self.check()
        s.run_root.mkdir(parents=True, exist_ok=True)
        store = StudyStore(s.store_path)
        self._check_identity(store)
        space = load_space(s.space, s.seed)
        searcher = create_searcher(s.backend)
        searcher.attach(s)
        searcher.setup(space, s.objectives, s.budget, s.seed, s.n_trials)
        store.set_meta("backend_name", searcher.name())
        stored = store.trials()
        for st in stored:
            if st.result is not None:
                searcher.tell(st.trial, st.result)
        if stored:
            searcher.advance(len(stored))
        finished = sum(st.result is not None for st in stored)
        pending = [st.trial for st in stored if st.result is None]
        if stored and not self.quiet:
            self.console.print(
                f"[bold]{s.name}[/]: resuming with {finished} finished trial(s); {len(pending)} interrupted "
                "trial(s) run again"
            )
        # what the store holds by (configuration, budget), finished or in flight: no repeats
        self._held: dict[tuple[str, float | None], tuple[Trial, Result | None]] = {
            self._key(st.trial.config, st.trial.budget): (st.trial, st.result) for st in stored
        }
        self._echoes: dict[tuple[str, float | None], list[Trial]] = defaultdict(list)
        finite = finite_configurations(space)
        self._space_size = len(finite) if finite is not None else None
        live: dict[int, Trial] = {}
        started = time.monotonic()
        stopped_by: int | None = None
        try:
            executor: Executor = (
                FunctionExecutor(self.objective) if self.objective is not None else create_executor(s.executor)
            )
        except BaseException:
            searcher.close()
            raise
        with signals.handle_signals(), signals.deferred():
            try:
                finished = self._loop(store, searcher, executor, live, pending, finished, started)
            except Interrupted as exc:  # a second signal: stop now
                stopped_by = exc.signum
            finally:
                stopped_by = stopped_by or signals.requested()
                try:
                    if stopped_by is not None:
                        executor.interrupt()
                        finished = self._drain(store, searcher, executor, live, finished)
                finally:
                    executor.close()
                    searcher.close()
        if stopped_by is not None:
            rerun = sum(st.result is None for st in store.trials())
            raise Interrupted(
                stopped_by,
                f"study {s.name} stopped by {Interrupted(stopped_by).signame}: {finished} trial(s) finished, "
                f"{rerun} interrupted trial(s) run again when the same command resumes it",
            )
        if self.exhausted is not None and not self.quiet:
            self.console.print(
                f"[bold]{s.name}[/]: {self.exhausted}; the study ends with {finished} finished trial(s) "
                f"(n_trials {s.n_trials})",
                highlight=False,
            )
        if s.wandb is not None and self.objective is None:
            self._wandb_summary(store)
        if s.report and not self.quiet:
            from .report import write_report

            write_report(store, console=self.console)
        return store

    def _loop(
        self,
        store: StudyStore,
        searcher: Searcher,
        executor: Executor,
        live: dict[int, Trial],
        pending: list[Trial],
        finished: int,
        started: float,
    ) -> int:
        """Ask, run and record until ``n_trials`` trials finished, time is up, the space is
        exhausted or a signal asked the study to stop; returns the number of finished trials."""
        s = self.settings
        reruns: Counter[int] = Counter()
        while signals.requested() is None:
            out_of_time = s.walltime is not None and time.monotonic() - started > s.walltime
            while (
                executor.running < executor.capacity
                and finished + len(live) < s.n_trials
                and not out_of_time
                and signals.requested() is None
            ):
                if pending:
                    trial = pending.pop(0)
                elif self.exhausted is not None:
                    break
                else:
                    try:
                        proposal = self._propose(searcher)
                    except SpaceExhausted as exc:
                        self.exhausted = str(exc)
                        break
                    if proposal is None:
                        break
                    trial = self._trial(proposal, store.next_id())  # running trials are already in the store
                    self._held[self._key(trial.config, trial.budget)] = (trial, None)
                store.start(trial)
                live[trial.id] = trial
                executor.submit(
                    self._job(trial, searcher),
                    should_prune=lambda step, value, t=trial: searcher.should_prune(t, step, value),
                )
            if executor.running == 0:
                if finished < s.n_trials and not out_of_time and self.exhausted is None and signals.requested() is None:
                    self.exhausted = f"{searcher.name()} has nothing more to propose"
                break
            for trial_id, result in executor.collect(timeout=1.0):
                trial = live.pop(trial_id)
                if result.interrupted and signals.requested() is None and reruns[trial.id] < MAX_RERUNS:
                    reruns[trial.id] += 1  # stopped by a signal the study did not get: run it again
                    pending.append(trial)
                    continue
                if signals.requested() is not None and result.status != Status.SUCCESS:
                    continue  # stopped with the study: left in the store, it runs again on resume
                finished = self._record(store, searcher, trial, result, finished)
        return finished

    def _drain(
        self, store: StudyStore, searcher: Searcher, executor: Executor, live: dict[int, Trial], finished: int
    ) -> int:
        """After a stop: wait for the running trials to come back, keep the ones that finished."""
        deadline = time.monotonic() + STOP_GRACE
        while executor.running and time.monotonic() < deadline:
            for trial_id, result in executor.collect(timeout=1.0):
                trial = live.pop(trial_id)
                if result.status == Status.SUCCESS and not result.interrupted:
                    finished = self._record(store, searcher, trial, result, finished)
        return finished

    def _record(self, store: StudyStore, searcher: Searcher, trial: Trial, result: Result, finished: int) -> int:
        store.finish(trial, result)
        searcher.tell(trial, result)
        key = self._key(trial.config, trial.budget)
        self._held[key] = (trial, result)
        for echo in self._echoes.pop(key, []):  # the same proposal made again while it ran
            searcher.tell(echo, result)
        finished += 1
        if not self.quiet:
            self._line(trial, result, finished)
        if self.on_record is not None:
            self.on_record(trial, result)
        return finished

    def _propose(self, searcher: Searcher) -> Proposal | None:
        """The backend's next proposal of a configuration the store does not hold at that
        budget. A repeat is answered with the stored result (or, while that trial runs, when it
        finishes) and the backend asked again; :class:`SpaceExhausted` after
        :data:`MAX_REPEATS` repeats in a row, or at once when every configuration of a finite
        space was run at the study's full budget."""
        s = self.settings
        if self._space_size is not None:
            top = s.budget.max if s.budget is not None else None
            done = {k[0] for k in self._held if top is None or (k[1] is not None and k[1] >= round(top, 6))}
            if len(done) >= self._space_size:
                raise SpaceExhausted(f"all {self._space_size} configurations of the space were run")
        for _ in range(MAX_REPEATS):
            proposal = searcher.ask()
            if proposal is None:
                return None
            budget = self._budget(proposal)
            key = self._key(proposal.config, budget)
            if key not in self._held:
                return proposal
            original, result = self._held[key]
            echo = Trial(original.id, proposal.config, budget, original.seed, proposal.info, proposal.backend_seed)
            if result is not None:
                searcher.tell(echo, result)
            else:
                self._echoes[key].append(echo)
        raise SpaceExhausted(
            f"{searcher.name()} proposed only configurations the study already ran, {MAX_REPEATS} times in a row "
            "(the space is exhausted or nearly)"
        )

    def _line(self, trial: Trial, result: Result, finished: int) -> None:
        values = "  ".join(
            f"{o.metric}={result.values[o.metric]:.4f}" for o in self.settings.objectives if o.metric in result.values
        )
        budget = f" budget {trial.budget:g}" if trial.budget is not None else ""
        colour = {"success": "green", "failed": "red", "pruned": "yellow"}[result.status.value]
        error = f"  [red]{result.error}[/]" if result.error else ""
        self.console.print(
            f"[{finished}/{self.settings.n_trials}] trial {trial.id} [{colour}]{result.status.value}[/]{budget} "
            f"{result.duration:.1f}s  {values}{error}",
            highlight=False,
        )

    def _wandb_summary(self, store: StudyStore) -> None:
        """One study-level W&B run with the trials and the Pareto table (offline by default)."""
        import wandb

        from facenas.callbacks.loggers import wandb_online_requested

        from .report import best_trials

        s = self.settings
        kwargs = {k: v for k, v in (s.wandb or {}).items() if k in ("project", "entity", "tags")}
        offline = s.wandb.get("offline") if s.wandb.get("offline") is not None else not wandb_online_requested()
        run = wandb.init(
            group=s.name,
            name=f"{s.name}-summary",
            job_type="study-summary",
            dir=str(s.run_root),
            mode="offline" if offline else "online",
            config={"backend": store.get_meta("backend_name")},
            **kwargs,
        )
        trials = store.trials()
        metrics = [o.metric for o in s.objectives]
        columns = ["id", "status", "budget", *metrics]
        rows = [
            [
                t.trial.id,
                t.status.value,
                t.trial.budget,
                *[(t.result.values.get(m) if t.result else None) for m in metrics],
            ]
            for t in trials
        ]
        best = {t.trial.id for t in best_trials(trials, s.objectives)}
        run.log(
            {
                "trials": wandb.Table(columns=columns, data=rows),
                "pareto": wandb.Table(columns=columns, data=[r for r in rows if r[0] in best]),
            }
        )
        run.finish()
