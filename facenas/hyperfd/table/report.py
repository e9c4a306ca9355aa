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
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from facenas.core.values import json_safe

from ..ranker import spearman
from .build import rows


def analyse(root: str | Path, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report's numbers, as a JSON-ready dict (``entries``: the table's rows when the caller
    has read them already)."""
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
        "summary": {
            "datasets": len(names),
            "entries": len(table),
            "spread_above_twice_noise": strong,
            "robust_spread_above_twice_noise": robust_strong,
            "cross_dataset_spearman": {"min": min(off), "max": max(off), "mean": float(np.mean(off))} if off else None,
        },
    }


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


def write_report(root: str | Path, out: str | Path | None = None) -> tuple[str, list[Path]]:
    """report.md, report.json and the PNGs in ``out`` (default ``<root>/report``); returns the
    Markdown and the files written."""
    out = Path(out) if out is not None else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    entries = rows(root)  # every store read once
    result = analyse(root, entries)
    text = markdown(result)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(json_safe(result), indent=1))
    return text, [out / "report.md", out / "report.json", *plots(entries, result, out)]
