"""FR-NAS's comparison of bias-mitigation methods (Table 1, Table 8): for each model x method,
(error; fairness metric) averaged over seeds, with the Pareto-optimal entries (lowest error and
lowest metric) marked, per fairness metric.

A run is a training's log folder (``facenas fit`` with the CSV logger: ``metrics.csv`` and
``hparams.yaml``). Its model is the backbone and its method the bias mitigation from
``hparams.yaml`` (``baseline`` without one), unless a runs YAML names them::

    runs:
      - {dir: runs/cmp/version_0, model: resnet18, method: baseline}
      - {dir: runs/cmp/version_1, model: resnet18, method: flipped}
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from facenas.core.errors import UserError
from facenas.core.pareto import pareto_mask

from .fairness import FAIRNESS_METRICS

METRICS = FAIRNESS_METRICS


@dataclass
class Run:
    """One training: its folder, model, method and last logged value of each metric."""

    path: str
    model: str
    method: str
    values: dict[str, float] = field(default_factory=dict)


def _last_values(metrics_csv: Path, stage: str) -> dict[str, float]:
    values: dict[str, float] = {}
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith(f"{stage}/") and value not in ("", None):
                    values[key.split("/", 1)[1]] = float(value)
    return values


def read_run(folder: str | Path, stage: str = "test", model: str | None = None, method: str | None = None) -> Run:
    """A run's model, method and metrics (the last value logged for each ``<stage>/<metric>``)."""
    folder = Path(folder)
    metrics = folder / "metrics.csv"
    if not metrics.is_file():
        raise UserError(f"{folder}: no metrics.csv (a run folder of the CSV logger, e.g. runs/<name>/version_0)")
    hparams: dict[str, Any] = {}
    if (folder / "hparams.yaml").is_file():
        hparams = yaml.safe_load((folder / "hparams.yaml").read_text()) or {}
    values = _last_values(metrics, stage)
    if "error" not in values:
        raise UserError(
            f"{metrics}: no {stage}/error logged (evaluate the {stage} split with callbacks.FairnessMetrics)"
        )
    return Run(
        str(folder),
        model or str(hparams.get("backbone", "model")),
        method or str(hparams.get("mitigation") or "baseline"),
        values,
    )


def read_runs(sources: Sequence[str | Path], stage: str = "test") -> list[Run]:
    """Runs from run folders and/or YAML files listing ``{dir, model, method}`` entries (``dir``
    relative to the YAML's folder)."""
    runs = []
    for source in sources:
        source = Path(source)
        if source.suffix in (".yaml", ".yml") and source.is_file():
            listed = (yaml.safe_load(source.read_text()) or {}).get("runs")
            if not isinstance(listed, list):
                raise UserError(f"{source}: expected a 'runs' list of {{dir, model, method}} entries")
            for i, entry in enumerate(listed):
                if not isinstance(entry, dict) or "dir" not in entry:
                    raise UserError(f"{source}: runs[{i}] needs a 'dir'")
                folder = Path(entry["dir"])
                folder = folder if folder.is_absolute() else source.parent / folder
                runs.append(read_run(folder, stage, entry.get("model"), entry.get("method")))
        else:
            runs.append(read_run(source, stage))
    if not runs:
        raise UserError("no runs to compare")
    return runs


def compare(runs: Sequence[Run], metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """Per (model, method): the runs, error and each metric as mean and std over the runs (ddof 1;
    0 for one run); per metric, which entries are Pareto-optimal in (error, metric)."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.model, run.method)].append(run)
    entries = []
    for (model, method), members in groups.items():
        entry: dict[str, Any] = {"model": model, "method": method, "runs": len(members)}
        for key in ("error", *metrics):
            values = np.array([r.values.get(key, math.nan) for r in members], dtype=float)
            with np.errstate(invalid="ignore"):  # a ratio is inf where a group is never right: std NaN
                entry[key] = float(values.mean())
                entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entries.append(entry)
    pareto: dict[str, list[bool]] = {}
    for key in metrics:
        costs = np.array([[e["error"], e[key]] for e in entries], dtype=float)
        finite = np.isfinite(costs).all(axis=1)
        mask = np.zeros(len(entries), dtype=bool)
        if finite.any():
            mask[finite] = pareto_mask(costs[finite])
        pareto[key] = mask.tolist()
    return {"entries": entries, "metrics": list(metrics), "pareto": pareto}


def markdown(result: dict[str, Any]) -> str:
    """One table per metric as FR-NAS lays them out: models as rows, methods as columns, cells
    ``(error; metric)`` (mean +- std over runs), Pareto-optimal cells in bold; where entries have
    different numbers of runs (a grid not finished), each cell says its own as ``n=...``."""
    entries = result["entries"]
    uneven = len({e["runs"] for e in entries}) > 1
    models = list(dict.fromkeys(e["model"] for e in entries))
    methods = list(dict.fromkeys(e["method"] for e in entries))
    lines = []
    for key in result["metrics"]:
        lines += [f"**(Error; {key})**, Pareto-optimal in bold", "", "| model | " + " | ".join(methods) + " |"]
        lines.append("|---|" + "---|" * len(methods))
        for model in models:
            cells = []
            for method in methods:
                found = [i for i, e in enumerate(entries) if e["model"] == model and e["method"] == method]
                if not found:
                    cells.append("")
                    continue
                e = entries[found[0]]
                cell = f"({_pm(e, 'error')}; {_pm(e, key)})"
                cell = f"**{cell}**" if result["pareto"][key][found[0]] else cell
                cells.append(f"{cell} n={e['runs']}" if uneven else cell)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pm(entry: dict[str, Any], key: str) -> str:
    value, std = entry[key], entry[f"{key}_std"]
    if value != value:  # NaN: undefined (one group, no probe) or never logged
        return "n/a"
    return f"{value:.3f} ± {std:.3f}" if entry["runs"] > 1 else f"{value:.3f}"


def undefined(result: dict[str, Any]) -> list[str]:
    """One line per metric that is undefined (NaN: logged as NaN, or never logged) for some
    entries of a :func:`compare` result, naming them."""
    lines = []
    for key in ("error", *result["metrics"]):
        missing = [f"{e['model']}/{e['method']}" for e in result["entries"] if e[key] != e[key]]
        if missing:
            lines.append(
                f"{key} is undefined for {', '.join(missing)} (logged as NaN: fewer than two groups or no probe, "
                "or never logged): n/a, left out of the Pareto front"
            )
    return lines


def all_undefined(result: dict[str, Any]) -> bool:
    """Whether every compared value (error and every metric, of every entry) is undefined."""
    return all(e[key] != e[key] for e in result["entries"] for key in ("error", *result["metrics"]))


def write_csv(result: dict[str, Any], path: Path) -> Path:
    """One row per (model, method, metric)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["model", "method", "runs", "metric", "error", "error_std", "value", "value_std", "pareto"])
        for key in result["metrics"]:
            for entry, optimal in zip(result["entries"], result["pareto"][key]):
                out.writerow(
                    [entry["model"], entry["method"], entry["runs"], key, entry["error"], entry["error_std"],
                     entry[key], entry[f"{key}_std"], int(optimal)]
                )  # fmt: skip
    return path


def plot(result: dict[str, Any], key: str, path: Path) -> Path:
    """Error against ``key``, one marker per model and colour per method, the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["entries"]
    models = list(dict.fromkeys(e["model"] for e in entries))
    methods = list(dict.fromkeys(e["method"] for e in entries))
    markers = "os^DvP*Xh"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for e in entries:
        ax.errorbar(
            e["error"], e[key], xerr=e["error_std"], yerr=e[f"{key}_std"], fmt=markers[models.index(e["model"]) % 9],
            color=f"C{methods.index(e['method']) % 10}", capsize=2, ms=7,
        )  # fmt: skip
    front = sorted((e["error"], e[key]) for e, m in zip(entries, result["pareto"][key]) if m)
    if front:
        ax.plot(*zip(*front), ls="--", c="#888", lw=1, zorder=0, label="Pareto front")
    for i, method in enumerate(methods):
        ax.plot([], [], "s", color=f"C{i % 10}", label=method)
    for i, model in enumerate(models):
        ax.plot([], [], markers[i % 9], color="#444", label=model)
    ax.set_xlabel("error")
    ax.set_ylabel(key)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
