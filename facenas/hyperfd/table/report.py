"""The report of a performance lookup table (HyperFD supplementary, Figures 2-4 and Table 8):
per dataset the AP distribution over configurations, the validation-test rank correlation, the
best configuration (chosen by validation AP, as the protocol selects), the seed noise against
the spread across configurations, and the Spearman correlation of configuration rankings
between datasets. Markdown, JSON and PNGs.

Per dataset, the pool's entries are those of its main seed (the seed with the most entries);
the seed noise is the mean, over the configurations trained with several seeds, of the standard
deviation of their test AP across seeds (ddof 1). The spread across configurations is given twice:
the standard deviation, and the interquartile range divided by 1.349 (the standard deviation a
normal distribution with that IQR has), which a few collapsed trainings cannot inflate.

Whether the table can tell search methods apart (the go / no-go checks of a pilot,
benchmarks/hyperfd/pilot/README.md): the share of the configurations' rank variance that the
optimiser x learning-rate cell explains, the gap between each dataset's best configuration and
its upper quartile against twice the seed noise, and, given a ``source`` dataset, how far a fixed
portfolio (its top ``budget`` configurations by validation AP) lands from each other dataset's
oracle in the protocol's normalized rank.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facenas.core.values import json_safe

from ..ranker import spearman
from .build import rows

# the cell that the share of rank variance is measured against
CELL = ("optimizer", "lr")


def cell_share(ranks: Sequence[float], cells: Sequence[Any]) -> float:
    """The share of the variance of ``ranks`` explained by ``cells`` (one label per rank): the
    between-cell sum of squares over the total; NaN with fewer than two cells or no variance."""
    values = np.asarray(ranks, float)
    labels = list(cells)
    total = float(((values - values.mean()) ** 2).sum())
    if len(set(labels)) < 2 or total == 0:
        return math.nan
    between = 0.0
    for label in set(labels):
        member = values[[c == label for c in labels]]
        between += len(member) * (member.mean() - values.mean()) ** 2
    return between / total


def portfolio_gap(pools: Mapping[str, Mapping[str, tuple[float, float]]], source: str, budget: int) -> dict[str, float]:
    """Per dataset other than ``source``: the normalized rank of a fixed portfolio (``source``'s
    top ``budget`` configurations by validation AP; on the target the one with the best
    validation AP is kept, as the protocol keeps it) minus the oracle's (``100 / pool size``).
    ``pools``: dataset -> configuration key -> (validation AP, test AP)."""
    if source not in pools:
        raise ValueError(f"no dataset {source!r} in the table (it has {', '.join(sorted(pools))})")
    picks = sorted(pools[source], key=lambda k: -pools[source][k][0])[:budget]
    gaps = {}
    for name, pool in pools.items():
        shared = [k for k in picks if k in pool]
        if name == source or not shared:
            continue
        kept = max(shared, key=lambda k: pool[k][0])
        better = sum(v > pool[kept][0] for v, _ in pool.values())
        gaps[name] = 100.0 * better / len(pool)  # (1 + better) / n minus the oracle's 1 / n
    return gaps


def analyse(
    root: str | Path,
    entries: list[dict[str, Any]] | None = None,
    source: str | None = None,
    budget: int = 2,
) -> dict[str, Any]:
    """The report's numbers, as a JSON-ready dict (``entries``: the table's rows when the caller
    has read them already; ``source`` and ``budget``: the fixed-portfolio check)."""
    entries = rows(root) if entries is None else entries
    table = [r for r in entries if r["status"] == "success" and r["val_ap50"] is not None]
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        by_dataset[row["dataset"]].append(row)
    failed = defaultdict(int)
    for row in entries:
        if row["status"] != "success":
            failed[row["dataset"]] += 1
    datasets: dict[str, Any] = {}
    pools: dict[str, dict[str, float]] = {}  # dataset -> configuration key -> test AP (main seed)
    valued: dict[str, dict[str, tuple[float, float]]] = {}  # ... -> (val AP, test AP)
    for name in sorted(by_dataset):
        entries = by_dataset[name]
        seeds = defaultdict(int)
        for row in entries:
            seeds[row["seed"]] += 1
        main = max(sorted(seeds), key=lambda s: seeds[s])
        pool = [r for r in entries if r["seed"] == main]
        pools[name] = {r["key"]: float(r["test_ap50"]) for r in pool if r["test_ap50"] is not None}
        val = [float(r["val_ap50"]) for r in pool]
        test = [float(r["test_ap50"]) if r["test_ap50"] is not None else math.nan for r in pool]
        per_config = defaultdict(list)
        for row in entries:
            if row["test_ap50"] is not None:
                per_config[row["key"]].append(float(row["test_ap50"]))
        repeated = [v for v in per_config.values() if len(v) > 1]
        noise = float(np.mean([np.std(v, ddof=1) for v in repeated])) if repeated else math.nan
        spread = float(np.std(test, ddof=1)) if len(test) > 1 else math.nan
        q25, q75 = np.nanpercentile(test, [25, 75])
        robust = float(q75 - q25) / 1.349
        best = max(pool, key=lambda r: r["val_ap50"])
        scored = [r for r in pool if r["test_ap50"] is not None]
        params = [json.loads(r["params"]) for r in scored]
        share = (
            cell_share(_ranks([float(r["test_ap50"]) for r in scored]), [tuple(p[c] for c in CELL) for p in params])
            if scored and all(c in p for p in params for c in CELL)
            else math.nan
        )
        top_gap = float(np.nanmax(test) - q75)
        valued[name] = {r["key"]: (float(r["val_ap50"]), float(r["test_ap50"])) for r in scored}
        datasets[name] = {
            "entries": len(pool),
            "failed": failed[name],
            "main_seed": main,
            "test_ap50": {
                "min": float(np.nanmin(test)),
                "median": float(np.nanmedian(test)),
                "max": float(np.nanmax(test)),
                "std": spread,
            },
            "val_test_spearman": spearman(val, test),
            "seed_noise_std": noise,
            "noise_configs": len(repeated),
            "spread_over_noise": spread / noise if noise and not math.isnan(noise) else math.nan,
            "robust_spread": robust,
            "robust_spread_over_noise": robust / noise if noise and not math.isnan(noise) else math.nan,
            "best": {k: best[k] for k in ("configuration", "val_ap50", "test_ap50")},
            "cell_share": share,
            "top_gap": top_gap,
            "top_gap_over_noise": top_gap / noise if noise and not math.isnan(noise) else math.nan,
        }
    names = sorted(pools)
    matrix = np.full((len(names), len(names)), math.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            shared = sorted(set(pools[a]) & set(pools[b]))
            matrix[i, j] = spearman([pools[a][k] for k in shared], [pools[b][k] for k in shared])
    off = [matrix[i, j] for i in range(len(names)) for j in range(len(names)) if i < j and not math.isnan(matrix[i, j])]
    strong = [n for n in names if datasets[n]["spread_over_noise"] > 2]
    robust_strong = [n for n in names if datasets[n]["robust_spread_over_noise"] > 2]
    return {
        "datasets": datasets,
        "names": names,
        "spearman": matrix.tolist(),
        "checks": checks(datasets, names, matrix, valued, source, budget),
        "summary": {
            "datasets": len(names),
            "entries": len(table),
            "spread_above_twice_noise": strong,
            "robust_spread_above_twice_noise": robust_strong,
            "cross_dataset_spearman": {"min": min(off), "max": max(off), "mean": float(np.mean(off))} if off else None,
        },
    }


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks, 1 = highest, ties sharing their mean rank."""
    from scipy.stats import rankdata

    return list(rankdata([-v for v in values]))


def checks(
    datasets: Mapping[str, Any],
    names: Sequence[str],
    matrix: np.ndarray,
    pools: Mapping[str, Mapping[str, tuple[float, float]]],
    source: str | None,
    budget: int,
) -> dict[str, Any]:
    """The go / no-go checks of benchmarks/hyperfd/pilot/README.md, each with its numbers and a
    verdict (None where it cannot be measured). "Online" datasets: all but ``source``."""
    online = [n for n in names if n != source]
    index = {n: i for i, n in enumerate(names)}
    pairs = [matrix[index[a], index[b]] for i, a in enumerate(online) for b in online[i + 1 :]]
    pairs = [v for v in pairs if not math.isnan(v)]
    shares = [datasets[n]["cell_share"] for n in online if not math.isnan(datasets[n]["cell_share"])]
    gaps = {n: datasets[n]["top_gap_over_noise"] for n in names}
    out: dict[str, Any] = {
        "disagree": {
            "pairs": len(pairs),
            "below_half": sum(v < 0.5 for v in pairs),
            "pass": (sum(v < 0.5 for v in pairs) > len(pairs) / 2) if pairs else None,
        },
        "cell_share": {
            "mean": float(np.mean(shares)) if shares else math.nan,
            "pass": (float(np.mean(shares)) < 0.5) if shares else None,
        },
        "top_resolved": {
            "top_gap_over_noise": gaps,
            "pass": None if any(math.isnan(v) for v in gaps.values()) else all(v > 2 for v in gaps.values()),
        },
    }
    if source is not None:
        portfolio = portfolio_gap(pools, source, budget)
        mean = float(np.mean(list(portfolio.values()))) if portfolio else math.nan
        out["portfolio"] = {
            "source": source,
            "budget": budget,
            "gap": portfolio,
            "mean": mean,
            "pass": (mean > 5) if portfolio else None,
        }
    verdicts = [c["pass"] for c in out.values()]
    out["go"] = None if None in verdicts else all(verdicts)
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [
        "| dataset | entries | failed | test AP@50 min / median / max | std over configs | seed noise std (configs) "
        "| spread / noise | IQR/1.349 | IQR-spread / noise | val-test Spearman |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in result["datasets"].items():
        ap = d["test_ap50"]
        lines.append(
            f"| {name} | {d['entries']} | {d['failed']} | {_fmt(ap['min'])} / {_fmt(ap['median'])} / {_fmt(ap['max'])} "
            f"| {_fmt(ap['std'])} | {_fmt(d['seed_noise_std'])} ({d['noise_configs']}) "
            f"| {_fmt(d['spread_over_noise'])} | {_fmt(d['robust_spread'])} | {_fmt(d['robust_spread_over_noise'])} "
            f"| {_fmt(d['val_test_spearman'])} |"
        )
    lines += ["", "Best configuration per dataset (chosen by validation AP@50):", ""]
    lines += ["| dataset | configuration | val AP@50 | test AP@50 |", "|---|---|---:|---:|"]
    for name, d in result["datasets"].items():
        b = d["best"]
        lines.append(f"| {name} | `{b['configuration']}` | {_fmt(b['val_ap50'])} | {_fmt(b['test_ap50'])} |")
    names = result["names"]
    lines += ["", "Spearman correlation of the configurations' test AP@50 between datasets:", ""]
    lines += ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, result["spearman"]):
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in row) + " |")
    lines += ["", *_checks_markdown(result["checks"])]
    s = result["summary"]
    cross = s["cross_dataset_spearman"]
    lines += [
        "",
        f"{len(s['spread_above_twice_noise'])} of {s['datasets']} datasets have a spread across configurations above "
        f"twice the seed noise ({', '.join(s['spread_above_twice_noise']) or 'none'}), "
        f"{len(s['robust_spread_above_twice_noise'])} by the IQR-based spread "
        f"({', '.join(s['robust_spread_above_twice_noise']) or 'none'}); cross-dataset Spearman "
        + (f"from {cross['min']:.2f} to {cross['max']:.2f} (mean {cross['mean']:.2f})." if cross else "undefined."),
    ]
    return "\n".join(lines) + "\n"


def _verdict(value: bool | None) -> str:
    return "n/a" if value is None else ("pass" if value else "fail")


def _checks_markdown(c: Mapping[str, Any]) -> list[str]:
    gaps = c["top_resolved"]["top_gap_over_noise"]
    lines = [
        "Can the table tell methods apart (benchmarks/hyperfd/pilot/README.md):",
        "",
        "| check | measured | verdict |",
        "|---|---|---|",
        f"| online domains disagree (Spearman < 0.5 for most pairs) | {c['disagree']['below_half']} of "
        f"{c['disagree']['pairs']} pairs | {_verdict(c['disagree']['pass'])} |",
        f"| optimiser x lr explains < half of the rank variance | mean share {_fmt(c['cell_share']['mean'])} "
        f"| {_verdict(c['cell_share']['pass'])} |",
        "| best - upper quartile > 2 x seed noise on every dataset | "
        + ", ".join(f"{n} {_fmt(v)}" for n, v in gaps.items())
        + f" | {_verdict(c['top_resolved']['pass'])} |",
    ]
    if "portfolio" in c:
        p = c["portfolio"]
        lines.append(
            f"| {p['source']}'s top-{p['budget']} portfolio > 5 rank points from the oracle | mean "
            f"{_fmt(p['mean'])} ("
            + ", ".join(f"{n} {v:.1f}" for n, v in p["gap"].items())
            + f") | {_verdict(p['pass'])} |"
        )
    lines += ["", f"Verdict: **{ {None: 'incomplete', True: 'go', False: 'no-go'}[c['go']] }**.", ""]
    return lines


def plots(entries: list[dict[str, Any]], result: dict[str, Any], out: Path) -> list[Path]:
    """ap_distribution.png (Figure 2), val_vs_test.png (Figure 3), spearman.png (Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = [r for r in entries if r["status"] == "success" and r["test_ap50"] is not None]
    names = result["names"]
    main = {n: result["datasets"][n]["main_seed"] for n in names}
    pool = {n: [r for r in table if r["dataset"] == n and r["seed"] == main[n]] for n in names}
    written = []
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    ax.boxplot([[r["test_ap50"] for r in pool[n]] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylabel("test AP@50")
    ax.set_title("AP over the pool's configurations")
    fig.tight_layout()
    written.append(out / "ap_distribution.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    cols = min(4, len(names))
    grid = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(grid, cols, figsize=(3 * cols, 3 * grid), squeeze=False)
    for ax, n in zip(axes.flat, names):
        ax.scatter([r["val_ap50"] for r in pool[n]], [r["test_ap50"] for r in pool[n]], s=8)
        ax.set_title(f"{n} (rho {_fmt(result['datasets'][n]['val_test_spearman'])})", fontsize=9)
        ax.set_xlabel("val AP@50", fontsize=8)
        ax.set_ylabel("test AP@50", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    written.append(out / "val_vs_test.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(names), 0.8 + 0.8 * len(names)))
    image = ax.imshow(np.array(result["spearman"], dtype=float), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="Spearman (test AP@50)")
    fig.tight_layout()
    written.append(out / "spearman.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


def write_report(
    root: str | Path, out: str | Path | None = None, source: str | None = None, budget: int = 2
) -> tuple[str, list[Path]]:
    """report.md, report.json and the PNGs in ``out`` (default ``<root>/report``); returns the
    Markdown and the files written (``source``, ``budget``: the fixed-portfolio check)."""
    out = Path(out) if out is not None else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    entries = rows(root)  # every store read once
    result = analyse(root, entries, source, budget)
    text = markdown(result)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(json_safe(result), indent=1))
    return text, [out / "report.md", out / "report.json", *plots(entries, result, out)]
