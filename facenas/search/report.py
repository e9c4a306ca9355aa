"""Study reports: the trials table, the best configuration or the Pareto front, hypervolume
against the number of evaluations, PNG plots, and the best configuration as a training YAML."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from facenas.core.pareto import hypervolume_history, pareto_mask, reference_point

from .spaces import apply_mapping, compact_config, derived_names, with_derived
from .store import StoredTrial, StudyStore
from .trial import Objective, Status


def _costs(trials: list[StoredTrial], objectives: list[Objective]) -> np.ndarray:
    return np.array(
        [t.result.costs(objectives) if t.result else [math.inf] * len(objectives) for t in trials], dtype=float
    ).reshape(-1, len(objectives))


def best_trials(
    trials: list[StoredTrial], objectives: list[Objective], final_budget_only: bool = True
) -> list[StoredTrial]:
    """The best successful trial (one objective) or the Pareto-optimal ones (several), among
    the trials at the highest budget reached when ``final_budget_only``."""
    ok = [t for t in trials if t.status == Status.SUCCESS]
    if final_budget_only and ok:
        top = max((t.trial.budget or 0) for t in ok)
        ok = [t for t in ok if (t.trial.budget or 0) == top]
    if not ok:
        return []
    costs = _costs(ok, objectives)
    if len(objectives) == 1:
        return [ok[int(np.argmin(costs[:, 0]))]]
    mask = pareto_mask(costs)
    return [t for t, m in zip(ok, mask) if m]


def export_training_yaml(trial: StoredTrial, settings: dict[str, Any], path: Path) -> Path:
    """The trial's training config as ``facenas fit`` resolved it (the base YAML(s), the study's
    overrides, the trial's mapped values, budget and seed; every default filled in), ready for
    ``facenas fit --config <path>``: it trains the trial again as it was measured."""
    from facenas.training.config import resolved_config

    overrides = dict(settings.get("overrides") or {})
    overrides.update(apply_mapping(trial.trial.config, settings["mapping"]))
    if trial.trial.budget is not None and settings.get("budget_key"):
        overrides[settings["budget_key"]] = int(round(trial.trial.budget))
    overrides["seed_everything"] = trial.trial.seed
    resolved = resolved_config(settings["base"], overrides)
    header = (
        f"# trial {trial.trial.id} of study {settings['name']}: "
        + ", ".join(
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (trial.result.values if trial.result else {}).items()
        )
        + f"\n# configuration: {json.dumps(trial.trial.config, sort_keys=True)}\n"
    )
    path.write_text(header + yaml.safe_dump(resolved, sort_keys=False))
    return path


def write_report(store: StudyStore, out_dir: str | Path | None = None, *, console: Any = None) -> dict[str, Any]:
    """Write the study's report into its runs folder (or ``out_dir``) and print a summary.

    Files: ``trials.csv``, ``summary.json`` (best or Pareto trials, hypervolume history),
    ``pareto.png`` / ``history.png``, ``best.yaml`` (or ``pareto_<id>.yaml`` per Pareto trial).
    """
    settings = store.get_meta("settings")
    if settings is None:
        raise ValueError(f"{store.path} holds no study")
    objectives = [Objective(**o) for o in settings["objectives"]]
    out = Path(out_dir) if out_dir is not None else Path(settings.get("runs_dir") or store.path.parent)
    trials = store.trials()  # a store that cannot be read is refused before anything is created
    out.mkdir(parents=True, exist_ok=True)
    finished = [t for t in trials if t.status != Status.RUNNING]
    names = [o.metric for o in objectives]
    params = sorted({k for t in trials for k in t.trial.config})
    derived = sorted({k for t in trials for k in derived_names(t.trial.config)})
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "status", "budget", *names, "duration_s", *derived, *params, "error"])
        for t in trials:
            values = t.result.values if t.result else {}
            full = with_derived(t.trial.config)
            writer.writerow(
                [
                    t.trial.id,
                    t.status.value,
                    t.trial.budget,
                    *[values.get(n, "") for n in names],
                    round(t.result.duration, 2) if t.result else "",
                    *[full.get(p, "") for p in derived],
                    *[t.trial.config.get(p, "") for p in params],
                    (t.result.error or "") if t.result else "",
                ]
            )
    costs = _costs(finished, objectives)
    reference = settings.get("reference_point") or (reference_point(costs) if np.isfinite(costs).any() else None)
    history = hypervolume_history(costs, reference) if reference is not None and len(objectives) > 1 else []
    best = best_trials(trials, objectives)
    exported = []
    for t in best if len(objectives) > 1 else best[:1]:
        name = "best.yaml" if len(objectives) == 1 else f"pareto_{t.trial.id}.yaml"
        exported.append(str(export_training_yaml(t, settings, out / name)))
    summary = {
        "study": settings["name"],
        "backend": store.get_meta("backend_name"),
        "trials": len(trials),
        "finished": len(finished),
        "succeeded": sum(t.status == Status.SUCCESS for t in trials),
        "failed": sum(t.status == Status.FAILED for t in trials),
        "pruned": sum(t.status == Status.PRUNED for t in trials),
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives],
        "best" if len(objectives) == 1 else "pareto": [
            {"id": t.trial.id, "config": t.trial.config, "budget": t.trial.budget, "values": t.result.values}
            for t in best
        ],
        "reference_point": reference,
        "hypervolume": history[-1] if history else None,
        "hypervolume_history": history,
        "exported": exported,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    _plots(finished, objectives, history, out, {t.trial.id for t in best})
    _print_summary(summary, finished, objectives, console)
    return summary


def _plots(
    trials: list[StoredTrial], objectives: list[Objective], history: list[float], out: Path, front_ids: set[int]
) -> None:
    # matplotlib's object API: no pyplot state, no process-wide backend choice
    from matplotlib.figure import Figure

    ok = [t for t in trials if t.status == Status.SUCCESS]
    if not ok:
        return
    values = np.array([[t.result.values.get(o.metric, np.nan) for o in objectives] for t in ok], dtype=float)
    if len(objectives) >= 2:
        mask = np.array([t.trial.id in front_ids for t in ok])
        top = max((t.trial.budget or 0) for t in ok)
        final = np.array([(t.trial.budget or 0) == top for t in ok])
        fig = Figure(figsize=(6, 4.5))
        ax = fig.subplots()
        ax.scatter(values[~mask & final, 0], values[~mask & final, 1], s=18, c="#5f6b7a", label="trials")
        if (~final).any():
            ax.scatter(values[~final, 0], values[~final, 1], s=12, c="#c9d1d9", label="lower-budget trials")
        front = values[mask][np.argsort(values[mask, 0])]
        ax.scatter(front[:, 0], front[:, 1], s=36, c="#d1495b", label="Pareto front", zorder=3)
        ax.step(front[:, 0], front[:, 1], where="post", ls="--", c="#d1495b")
        ax.set_xlabel(objectives[0].metric)
        ax.set_ylabel(objectives[1].metric)
        ax.legend()
        ax.set_title("all trials, Pareto front highlighted")
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=120)
    fig = Figure(figsize=(10 if history else 6, 4))
    axes = fig.subplots(1, 2 if history else 1, squeeze=False)
    ax = axes[0, 0]
    first = values[:, 0]
    order = np.arange(1, len(first) + 1)
    ax.scatter(order, first, s=14, c="#9aa5b1", label="trial")
    running = np.minimum.accumulate(first) if objectives[0].mode == "min" else np.maximum.accumulate(first)
    ax.plot(order, running, c="#2e86ab", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(objectives[0].metric)
    ax.legend()
    ax.set_title("optimisation history")
    if history:
        axes[0, 1].plot(np.arange(1, len(history) + 1), history, c="#d1495b")
        axes[0, 1].set_xlabel("evaluation")
        axes[0, 1].set_ylabel("hypervolume")
        axes[0, 1].set_title("hypervolume")
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=120)


def _print_summary(
    summary: dict[str, Any], trials: list[StoredTrial], objectives: list[Objective], console: Any
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"study {summary['study']}: {summary['finished']} finished "
        f"({summary['succeeded']} ok, {summary['failed']} failed, {summary['pruned']} pruned)"
    )
    table.add_column("id", justify="right")
    table.add_column("status")
    table.add_column("budget", justify="right")
    for o in objectives:
        table.add_column(f"{o.metric} ({o.mode})", justify="right")
    table.add_column("configuration", overflow="fold")
    marked = {b["id"] for b in summary.get("best", summary.get("pareto", []))}
    for t in trials:
        values = t.result.values if t.result else {}
        cells = [f"{values[o.metric]:.4f}" if o.metric in values else "-" for o in objectives]
        shown = compact_config(t.trial.config)
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        style = "bold" if t.trial.id in marked else None
        table.add_row(
            str(t.trial.id),
            t.status.value,
            f"{t.trial.budget:g}" if t.trial.budget else "-",
            *cells,
            config,
            style=style,
        )
    console.print(table)
    label = "best configuration" if len(objectives) == 1 else "Pareto front"
    console.print(
        f"{label} (bold above): trials {sorted(marked)}; training YAML: {', '.join(summary['exported']) or '-'}"
    )
    if summary.get("hypervolume") is not None:
        console.print(f"hypervolume {summary['hypervolume']:.4f} (reference point {summary['reference_point']})")


def find_study(study: str | Path, runs: str | Path = "runs/search") -> Path:
    """A study's SQLite store from its name (``runs/search/<name>/study.sqlite``), folder or file."""
    path = Path(study)
    if path.is_dir():
        path = path / "study.sqlite"
    elif not path.exists():
        path = Path(runs) / str(study) / "study.sqlite"
    if not path.is_file():
        raise FileNotFoundError(2, f"no study found at {study}", str(path))
    return path
