"""HyperFD's online protocol (Algorithm 1) and the methods it compares, on a performance lookup
table (../shared/design/HYPERFD.md sections 3 and 4).

A :class:`Method` warms up on the offline datasets' tables, then meets the online datasets one
after another. For each it sees an :class:`OnlineTask`: the candidate pool, the dataset's per-image
features (computed on the client side; a method that respects the privacy boundary reduces them to
its meta-feature) and :meth:`OnlineTask.evaluate`, the only way to learn a configuration's AP on it,
at most ``budget`` times ("training" is a table lookup here). The protocol keeps the best evaluated
configuration by validation AP and scores it by its test AP and its normalized rank
``100 * (1 + #pool configurations with higher validation AP) / pool size``.
"""

from __future__ import annotations

import csv
import json
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenas.search.spaces import config_key


@dataclass
class TaskData:
    """One dataset of a lookup table: its configurations (key -> parameters), validation and test
    AP per configuration key, and its per-image features per extractor name."""

    name: str
    configs: dict[str, dict[str, Any]]
    val: dict[str, float]
    test: dict[str, float]
    features: dict[str, np.ndarray] = field(default_factory=dict)
    space: str = "hyperfd_hpo"
    # the (validation, test) AP of other training seeds of a configuration, where the table has them
    repeats: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def with_seed_draw(self, rng: np.random.Generator) -> TaskData:
        """The table noise: a copy in which every configuration with seed repeats takes the entry
        of a seed drawn uniformly (its own included)."""
        val, test = dict(self.val), dict(self.test)
        for key in sorted(self.repeats):
            entries = [(self.val[key], self.test[key]), *self.repeats[key]]
            val[key], test[key] = entries[int(rng.integers(len(entries)))]
        return TaskData(self.name, self.configs, val, test, self.features, self.space, self.repeats)

    def feature(self, extractor: str) -> np.ndarray:
        if extractor not in self.features:
            raise KeyError(f"dataset {self.name!r} has no {extractor!r} features (it has {sorted(self.features)})")
        return self.features[extractor]


def read_table(path: str | Path, seed: int | None = None) -> dict[str, TaskData]:
    """The datasets of an exported lookup table (``facenas hyperfd export``): per dataset the
    successful entries of one training seed (``seed``, default each dataset's main seed: the one
    with the most entries), so that seed-noise repeats do not enter the pools; the other seeds'
    entries of a configuration of the pool are its ``repeats``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "lookup table not found", str(path))
    by_dataset: dict[str, dict[int, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            missing = [k for k in ("dataset", "params", "seed", "val_ap50", "test_ap50", "status") if k not in row]
            if missing:
                raise ValueError(
                    f"{path}:{line}: no column {missing[0]!r} (export the table with `facenas hyperfd export`)"
                )
            if row["status"] != "success" or not row["val_ap50"] or not row["test_ap50"]:
                continue
            by_dataset[row["dataset"]][int(row["seed"])].append(row)
    out = {}
    for name, seeds in sorted(by_dataset.items()):
        chosen = seed if seed is not None else max(seeds, key=lambda s: (len(seeds[s]), -s))
        data = TaskData(name, {}, {}, {})
        for row in seeds.get(chosen, []):
            data.space = row.get("space") or data.space
            params = json.loads(row["params"])
            key = config_key(params)
            data.configs[key] = params
            data.val[key] = float(row["val_ap50"])
            data.test[key] = float(row["test_ap50"])
        for other in sorted(s for s in seeds if s != chosen):
            for row in seeds[other]:
                key = config_key(json.loads(row["params"]))
                if key in data.configs:
                    data.repeats.setdefault(key, []).append((float(row["val_ap50"]), float(row["test_ap50"])))
        if data.configs:
            out[name] = data
    if not out:
        raise ValueError(f"{path}: no successful entry")
    return out


class BudgetExceeded(RuntimeError):
    pass


class OnlineTask:
    """What a method sees of an online dataset."""

    def __init__(self, data: TaskData, budget: int) -> None:
        self._data = data
        self.name = data.name
        self.budget = budget
        self.pool: list[dict[str, Any]] = [data.configs[k] for k in sorted(data.configs)]
        self.evaluated: dict[str, float] = {}  # key -> validation AP, in order of evaluation

    def features(self, extractor: str) -> np.ndarray:
        """The dataset's per-image features (client side: only a meta-feature may leave it)."""
        return self._data.feature(extractor)

    def evaluate(self, config: Mapping[str, Any]) -> float:
        """ "Train" ``config`` on the dataset: its validation AP (a table lookup), counted against
        the budget; asking again for an evaluated configuration costs nothing."""
        key = config_key(config)
        if key in self.evaluated:
            return self.evaluated[key]
        if key not in self._data.val:
            raise KeyError(f"configuration {key} is not in the pool of {self.name!r}")
        if len(self.evaluated) >= self.budget:
            raise BudgetExceeded(f"{self.name}: budget of {self.budget} evaluations used up")
        self.evaluated[key] = self._data.val[key]
        return self.evaluated[key]

    @property
    def remaining(self) -> int:
        return self.budget - len(self.evaluated)

    def unevaluated(self) -> list[dict[str, Any]]:
        return [c for c in self.pool if config_key(c) not in self.evaluated]


class Method(ABC):
    """A configuration-transfer method: warm up on the offline tables, then pick configurations
    for each online task (through :meth:`OnlineTask.evaluate`) and learn from what it saw."""

    name = "method"

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        """Learn from the offline datasets' full tables (the platform's own)."""

    def warmup_key(self) -> tuple | None:
        """What the warm-up depends on besides the offline data and the generator, for methods
        whose warm-up is worth sharing (readings that differ only after it reuse one warm-up in an
        evaluation run); None: not shared."""
        return None

    def warm_state(self) -> Any:
        """A copy of everything the warm-up set (only for a method with a :meth:`warmup_key`)."""
        raise NotImplementedError

    def load_warm_state(self, state: Any) -> None:
        """Continue from :meth:`warm_state` of a method with the same :meth:`warmup_key`, as if
        this one had warmed up itself."""
        raise NotImplementedError

    @abstractmethod
    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        """Evaluate up to ``task.budget`` configurations of the task's pool."""

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        """Learn from the task's evaluated configurations (``task.evaluated``) once it is done."""


def fill_random(task: OnlineTask, rng: np.random.Generator) -> None:
    """Spend the task's remaining budget on distinct configurations drawn uniformly."""
    rest = task.unevaluated()
    for i in rng.choice(len(rest), size=min(task.remaining, len(rest)), replace=False):
        task.evaluate(rest[int(i)])


def evaluate_ranked(task: OnlineTask, ranked: Sequence[Mapping[str, Any]]) -> None:
    """Evaluate configurations in this order until the budget is spent."""
    for config in ranked:
        if task.remaining == 0:
            return
        task.evaluate(config)


class RandomSearch(Method):
    """B distinct configurations drawn uniformly from the pool."""

    name = "random"

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        fill_random(task, rng)


def normalized_rank(data: TaskData, key: str) -> float:
    """``100 * (1 + #configurations with a strictly higher validation AP) / pool size``."""
    value = data.val[key]
    return 100.0 * (1 + sum(v > value for v in data.val.values())) / len(data.val)


def random_rank_closed_form(n: int, budget: int) -> tuple[float, float]:
    """Mean and std of random search's normalized rank (the best of B distinct uniform picks
    among N distinct values): (N+1)/(B+1) and sqrt((N+1)(N-B)B / ((B+1)^2 (B+2))), times 100/N."""
    mean = (n + 1) / (budget + 1)
    var = (n + 1) * (n - budget) * budget / ((budget + 1) ** 2 * (budget + 2))
    return 100.0 * mean / n, 100.0 * math.sqrt(var) / n


def run_online(
    method: Method,
    offline: Sequence[TaskData],
    online: Sequence[TaskData],
    budget: int = 4,
    seed: int = 0,
    warm: dict[tuple, Any] | None = None,
) -> list[dict[str, Any]]:
    """Algorithm 1 for one method and one order of the online datasets: per task the
    configuration kept (best validation AP among those evaluated), its test AP and normalized rank.

    ``warm``: warm-ups already done on these ``offline`` datasets with this ``seed`` (by
    :meth:`Method.warmup_key`), reused instead of warming up again, and this method's added; the
    rows are the same as without."""
    rng = np.random.default_rng(seed)
    key = method.warmup_key() if warm is not None else None
    if key is not None and key in warm:
        state, rng.bit_generator.state = warm[key]
        method.load_warm_state(state)
    else:
        method.warmup(offline, rng)
        if key is not None:
            warm[key] = (method.warm_state(), rng.bit_generator.state)
    results = []
    for index, data in enumerate(online):
        task = OnlineTask(data, budget)
        method.select(task, rng)
        if not task.evaluated:
            raise RuntimeError(f"method {method.name} evaluated nothing on {data.name}")
        best = max(task.evaluated, key=lambda k: (task.evaluated[k], -list(task.evaluated).index(k)))
        results.append(
            {
                "method": method.name,
                "task": index,
                "dataset": data.name,
                "configuration": best,
                "val_ap50": data.val[best],
                "test_ap50": data.test[best],
                "rank": normalized_rank(data, best),
                "pool": len(data.val),
                "evaluated": len(task.evaluated),
            }
        )
        method.update(task, rng)
    return results


def evaluate(
    table: Mapping[str, TaskData],
    methods: Mapping[str, Callable[[int], Method]],
    offline: Sequence[str],
    online: Sequence[str] | None = None,
    runs: int = 10,
    budget: int = 4,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    journal: str | Path | None = None,
    journal_settings: Mapping[str, Any] | None = None,
    table_noise: bool = False,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Every method on ``runs`` random orders of the online datasets (run r: order and method
    seeds from ``(seed, r)``, the same order for every method); one row per (method, run, task).
    With ``table_noise`` run r also draws, for every configuration with seed repeats, which
    seed's entry the table holds (:meth:`TaskData.with_seed_draw`, the same for every method),
    so that the spread over runs covers the seed noise of the table too.

    With a ``journal`` (a JSON-lines file) each finished (run, method) is appended as it ends and
    a killed evaluation resumes where it stopped: a (run, method) already there is not run again.
    The journal's first line holds the settings (with ``journal_settings``, what else shapes the
    methods); resuming with other settings is refused.

    ``workers`` > 1 runs that many runs at once in forked processes (each on one thread); a run's
    rows depend only on ``(seed, run)``, so the result is the same as with one worker."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    unknown = [n for n in [*offline, *(online or [])] if n not in table]
    if unknown:
        raise ValueError(f"dataset {unknown[0]!r} is not in the table (it has {', '.join(table)})")
    online = [n for n in table if n not in offline] if online is None else list(online)
    if not online:
        raise ValueError("no online dataset: every dataset of the table is offline")
    settings = {"offline": list(offline), "online": online, "budget": budget, "seed": seed, **(journal_settings or {})}
    if table_noise:  # absent when off: journals written before the option resume
        settings["table_noise"] = True
    done = _read_journal(journal, settings) if journal is not None else {}
    if done and progress is not None:
        progress(f"resuming {journal}: {len(done)} (run, method) pairs already finished")

    def one_run(run: int) -> list[dict[str, Any]]:
        todo = {m: f for m, f in methods.items() if (run, m) not in done}
        if not todo:
            return []
        drawn = table
        if table_noise:
            rng = np.random.default_rng([seed, run, 2])
            drawn = {name: data.with_seed_draw(rng) for name, data in table.items()}
        return _run(drawn, todo, offline, online, run, runs, budget, seed, progress, journal)

    with single_thread():
        if workers == 1:
            fresh = {run: one_run(run) for run in range(runs)}
        else:
            fresh = _in_forked_workers(one_run, range(runs), workers)
    rows = []
    for run in range(runs):
        for name in methods:
            rows += done.get((run, name)) or [r for r in fresh[run] if r["method"] == name]
    return rows


_FORKED_JOB: Callable[[int], Any] | None = None


def _call_forked_job(item: int) -> Any:
    assert _FORKED_JOB is not None
    return _FORKED_JOB(item)


def _in_forked_workers(job: Callable[[int], Any], items: Sequence[int], workers: int) -> dict[int, Any]:
    """``{item: job(item)}`` computed by ``workers`` forked processes. Forked, not spawned, because
    the job closes over the methods' factories (lambdas, which do not pickle); only the item goes
    to a worker and only the job's result (plain rows) comes back. A failed item raises here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _FORKED_JOB
    _FORKED_JOB = job
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return dict(zip(items, pool.map(_call_forked_job, items)))
    finally:
        _FORKED_JOB = None


def _read_journal(path: str | Path, settings: Mapping[str, Any]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """The finished (run, method) rows of an evaluation journal, creating it with ``settings`` when new."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings}) + "\n")
        return {}
    done: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with open(path) as f:
        head = json.loads(f.readline())
        if head.get("settings") != settings:
            raise ValueError(
                f"{path} was written with other settings ({head.get('settings')}); "
                "use another output folder or delete it"
            )
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed write
                continue
            done[(entry["run"], entry["method"])] = entry["rows"]
    return done


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: the rankers' tensors are tiny, and on a busy machine the
    thread pool's synchronisation made their steps ten times slower (measured: 148 s against
    17 s for one HyperFD run on a planted table with 2 cores shared with a training)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(
    table: Mapping[str, TaskData],
    methods: Mapping[str, Callable[[int], Method]],
    offline: Sequence[str],
    online: Sequence[str],
    run: int,
    runs: int,
    budget: int,
    seed: int,
    progress: Callable[[str], None] | None,
    journal: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One run: a random order of the online datasets (the same for every method)."""
    order = [online[i] for i in np.random.default_rng([seed, run]).permutation(len(online))]
    method_seed = int(np.random.SeedSequence([seed, run, 1]).generate_state(1)[0])
    rows = []
    warm: dict[tuple, Any] = {}  # every method of the run warms up on the same data with the same seed
    for name, factory in methods.items():
        result = run_online(
            factory(method_seed), [table[n] for n in offline], [table[n] for n in order], budget, method_seed, warm
        )
        for r in result:
            r.update(method=name, run=run)
        rows += result
        if journal is not None:  # one short write in append mode: parallel workers' lines do not interleave
            with open(journal, "a") as f:
                f.write(json.dumps({"run": run, "method": name, "rows": result}, default=str) + "\n")
        if progress is not None:
            progress(f"run {run + 1}/{runs} {name}: mean rank {np.mean([r['rank'] for r in result]):.2f}")
    return rows


def summarize_runs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Table 7's layout: per method and online dataset the mean and std over runs of the test AP
    and the normalized rank; the average over datasets (AP: mean and std of the dataset means;
    rank: mean of the dataset means and mean of the per-dataset stds, as the supplementary does);
    per task index the mean rank (does a method improve as it sees more tasks?)."""
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    curves: dict[tuple[str, int], list[float]] = defaultdict(list)
    by_run: dict[tuple[str, Any], list[float]] = defaultdict(list)
    for r in rows:
        cells[(r["method"], r["dataset"])].append(r)
        curves[(r["method"], r["task"])].append(r["rank"])
        by_run[(r["method"], r.get("run", 0))].append(r["rank"])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    datasets = sorted({r["dataset"] for r in rows})
    out: dict[str, Any] = {"methods": methods, "datasets": datasets, "cells": {}, "average": {}, "curves": {}}
    for m in methods:
        ap_means, rank_means, rank_stds = [], [], []
        for d in datasets:
            chosen = cells[(m, d)]
            ap = np.array([c["test_ap50"] for c in chosen])
            rank = np.array([c["rank"] for c in chosen])
            out["cells"][f"{m}|{d}"] = {
                "ap_mean": float(ap.mean()),
                "ap_std": float(ap.std()),
                "rank_mean": float(rank.mean()),
                "rank_std": float(rank.std()),
                "runs": len(chosen),
            }
            ap_means.append(ap.mean())
            rank_means.append(rank.mean())
            rank_stds.append(rank.std())
        run_means = np.array([np.mean(v) for (mm, _), v in by_run.items() if mm == m])
        out["average"][m] = {
            "ap_mean": float(np.mean(ap_means)),
            "ap_std": float(np.std(ap_means)),
            "rank_mean": float(np.mean(rank_means)),
            "rank_std": float(np.mean(rank_stds)),
            # the standard error of the average rank over runs (the datasets are fixed, the runs'
            # orders and seeds are the sample): std of the per-run average / sqrt(runs)
            "rank_sem": float(run_means.std(ddof=1) / math.sqrt(len(run_means))) if len(run_means) > 1 else math.nan,
        }
        tasks = sorted(t for (mm, t) in curves if mm == m)
        out["curves"][m] = [float(np.mean(curves[(m, t)])) for t in tasks]
    return out


def bootstrap(
    rows: Sequence[Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]],
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The average normalized rank per method and group of online datasets, with its uncertainty
    over what varies: the runs (order, method seeds and, with table noise, the seed entries drawn)
    and the datasets. Each of ``samples`` resamples draws the group's datasets and the runs with
    replacement, the same draw for every method (so differences are paired); a method's mean
    rank has a standard error (the resamples' std) and a 95 % percentile interval, and so has the
    difference between every two methods.

    Returns ``{group: {"datasets": [...], "methods": {m: {mean, se, lo, hi}},
    "differences": {"a|b": {mean, lo, hi}}}}`` (``a - b``: negative when ``a`` ranks better).
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    runs = sorted({r.get("run", 0) for r in rows})
    cell: dict[tuple[str, Any, str], float] = {(r["method"], r.get("run", 0), r["dataset"]): r["rank"] for r in rows}
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for group, members in groups.items():
        names = [d for d in members if any((m, run, d) in cell for m in methods for run in runs)]
        if not names:
            continue
        # [method, run, dataset] ranks of this group
        ranks = np.array([[[cell.get((m, run, d), np.nan) for d in names] for run in runs] for m in methods])
        means = np.nanmean(ranks, axis=(1, 2))
        draws = np.empty((samples, len(methods)))
        for b in range(samples):
            r_idx = rng.integers(len(runs), size=len(runs))
            d_idx = rng.integers(len(names), size=len(names))
            draws[b] = np.nanmean(ranks[:, r_idx][:, :, d_idx], axis=(1, 2))
        found = {
            m: {
                "mean": float(means[i]),
                "se": float(draws[:, i].std(ddof=1)) if samples > 1 else math.nan,
                "lo": float(np.percentile(draws[:, i], 2.5)),
                "hi": float(np.percentile(draws[:, i], 97.5)),
            }
            for i, m in enumerate(methods)
        }
        differences = {}
        for i, a in enumerate(methods):
            for j, b in enumerate(methods):
                if i != j:
                    diff = draws[:, i] - draws[:, j]
                    differences[f"{a}|{b}"] = {
                        "mean": float(means[i] - means[j]),
                        "lo": float(np.percentile(diff, 2.5)),
                        "hi": float(np.percentile(diff, 97.5)),
                    }
        out[group] = {"datasets": names, "methods": found, "differences": differences}
    return out


def verdicts(found: Mapping[str, Any], method: str, reference: float | None = None) -> list[str]:
    """Plain sentences: does ``method`` rank better than each other method of a
    :func:`bootstrap` group (the 95 % interval of the paired difference below 0), and than
    random search's closed form ``reference`` (its own interval below it)?"""
    own = found["methods"][method]
    lines = []
    if reference is not None:
        word = "beats" if own["hi"] < reference else ("is worse than" if own["lo"] > reference else "does not beat")
        lines.append(
            f"{method} {word} random search's closed form ({own['mean']:.2f}, 95 % interval "
            f"{own['lo']:.2f} to {own['hi']:.2f}, against {reference:.2f})"
        )
    for other in found["methods"]:
        if other == method:
            continue
        d = found["differences"][f"{method}|{other}"]
        if d["hi"] < 0:
            word = "beats"
        elif d["lo"] > 0:
            word = "is beaten by"
        else:
            word = "is not resolved from"
        lines.append(
            f"{method} {word} {other} (difference {d['mean']:+.2f}, 95 % interval {d['lo']:+.2f} to {d['hi']:+.2f})"
        )
    return lines


def bootstrap_markdown(
    result: Mapping[str, Any], reference: Mapping[str, float] | None = None, focus: Sequence[str] = ()
) -> str:
    """The :func:`bootstrap` result as one table per group (mean normalized rank, standard error,
    95 % interval) and, for each method of ``focus``, the plain verdicts against every other
    method and random search's closed form (``reference``: group -> value)."""
    lines = []
    for group, found in result.items():
        lines += [
            f"**{group}** ({len(found['datasets'])} online datasets: {', '.join(found['datasets'])})",
            "",
            "| method | mean normalized rank (%) | s.e. | 95 % interval |",
            "|---|---:|---:|---|",
        ]
        for m, v in sorted(found["methods"].items(), key=lambda item: item[1]["mean"]):
            lines.append(f"| {m} | {v['mean']:.2f} | {v['se']:.2f} | {v['lo']:.2f} to {v['hi']:.2f} |")
        lines.append("")
        for method in focus:
            if method in found["methods"]:
                ref = None if reference is None else reference.get(group)
                lines += [f"- {line}" for line in verdicts(found, method, ref)]
        lines.append("")
    return "\n".join(lines) + "\n"


def _pm(mean: float, std: float) -> str:
    """``mean ± std``, or the mean alone where nothing varied (a deterministic method)."""
    return f"{mean:.2f}" if std == 0 else f"{mean:.2f} ± {std:.2f}"


def markdown(summary: Mapping[str, Any], reference: Mapping[str, float] | None = None) -> str:
    """The summary as two Markdown tables (test AP x 100, normalized rank), datasets as columns,
    and the per-task mean-rank curves."""
    datasets = summary["datasets"]
    lines = []
    for title, key, scale in (
        ("Test AP@50 of the kept configuration (x 100)", "ap", 100.0),
        ("Normalized rank (%)", "rank", 1.0),
    ):
        lines += [
            f"**{title}**",
            "",
            "| method | " + " | ".join(datasets) + " | average |",
            "|---" * (len(datasets) + 2) + "|",
        ]
        for m in summary["methods"]:
            cells = [summary["cells"][f"{m}|{d}"] for d in datasets]
            avg = summary["average"][m]
            row = [_pm(c[key + "_mean"] * scale, c[key + "_std"] * scale) for c in cells]
            row.append(_pm(avg[key + "_mean"] * scale, avg[key + "_std"] * scale))
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Standard error of the average rank over runs: "
        + ", ".join(
            f"{m} {sem:.2f}" if math.isfinite(sem := summary["average"][m]["rank_sem"]) else f"{m} n/a (one run)"
            for m in summary["methods"]
        ),
        "",
    ]
    if reference:
        lines += ["Random search's closed form: " + ", ".join(f"{k} {v:.2f}" for k, v in reference.items()), ""]
    lines += ["**Mean normalized rank by task index** (1 = the first online dataset)", ""]
    n = max(len(c) for c in summary["curves"].values())
    lines += ["| method | " + " | ".join(str(i + 1) for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    for m, curve in summary["curves"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in curve) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "BudgetExceeded",
    "Method",
    "OnlineTask",
    "RandomSearch",
    "TaskData",
    "bootstrap",
    "bootstrap_markdown",
    "evaluate",
    "evaluate_ranked",
    "fill_random",
    "markdown",
    "normalized_rank",
    "random_rank_closed_form",
    "read_table",
    "run_online",
    "summarize_runs",
    "verdicts",
]
