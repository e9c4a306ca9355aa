"""HyperFD's evaluation on a performance lookup table (supplementary Table 7) and the training of
a ranker state for the ``hyperfd`` search backend: the library behind ``facenas hyperfd evaluate``
and ``facenas hyperfd train``. Each function writes its files and returns what it wrote."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenas.core.progress import track

DEFAULT_METHODS = (
    "random",
    "best_on_source",
    "tr_automl",
    "hyperstar",
    "scot",
    "zero_shot",
    "hyperfd_stats",
    "hyperfd_mse",
    "hyperfd",
    "similar_portfolio",
)


@dataclass
class Evaluation:
    """What :func:`evaluate_table` wrote: the Markdown report, the folder and its files."""

    text: str
    out: Path
    files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankerState:
    """What :func:`train_ranker` wrote: the state file, the space, the extractor and the datasets learned from."""

    path: Path
    space: str
    features: str
    datasets: list[str]


def attach_features(table: dict, table_config: str, datasets: Sequence[str], extractors: set[str], cache: str) -> None:
    """Give each dataset of ``table`` the per-image features of its training images (what its
    client holds), by extractor, cached per (dataset, extractor version) under ``cache``.

    Args:
        table: the lookup table (:func:`facenas.hyperfd.online.read_table`), changed in place.
        table_config: the table's YAML (configs/hyperfd/...), to read each dataset's images.
        datasets: the datasets of ``table`` to give features.
        extractors: extractor names (label_stats, detector, timm:<name>).
        cache: the feature cache folder.
    """
    from facenas.hyperfd.features import create_extractor, extract_features
    from facenas.hyperfd.table.build import dataset_module

    built = {
        name: create_extractor(name, **({"allow_random": True} if name.startswith("timm:") else {}))
        for name in extractors
    }
    for dataset in track(list(datasets), "meta-features"):
        data = dataset_module(table_config, dataset)
        data.prepare_data()
        data.setup("fit")
        samples = data.splits["train"]
        table[dataset].features = {name: extract_features(samples, e, cache, dataset) for name, e in built.items()}


def plot_curves(summary: dict, path: str | Path) -> Path:
    """The mean normalized rank by online task index, one line per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4))
    colours = plt.get_cmap("tab20").colors  # a dozen methods: the default cycle repeats after 10
    for i, (method, curve) in enumerate(summary["curves"].items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="osD^v<>"[i % 7], color=colours[i % 20], label=method)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("online task index")
    ax.set_ylabel("mean normalized rank (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


PROTOCOLS = ("online", "leave_one_family_out", "leave_one_offline_out", "offline_halves")


def dataset_families(table_config: str | Path, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each dataset's families: its ``family`` key in the table YAML (a name or a list), else
    the families of its ``domain`` (``photos`` for untransformed photos), else its own name."""
    import yaml

    from facenas.datamodules.detection.domains import Domain

    path = Path(table_config)
    if not path.is_file():
        raise FileNotFoundError(2, "table config not found", str(path))
    entries = {d.get("name"): d for d in (yaml.safe_load(path.read_text()) or {}).get("datasets", [])}
    out = {}
    for name in names:
        entry = entries.get(name) or {}
        given = entry.get("family")
        domain = (entry.get("data") or {}).get("domain")
        if given:
            out[name] = tuple([given] if isinstance(given, str) else given)
        elif domain is not None:
            steps = Domain(domain.get("families", ()), int(domain.get("seed", 0))).steps
            out[name] = tuple(dict.fromkeys(step for step, _ in steps)) or ("photos",)
        else:
            out[name] = (name,)
    return out


def protocol_splits(
    protocol: str,
    names: Sequence[str],
    offline: Sequence[str],
    families: Mapping[str, Sequence[str]],
    seed: int = 0,
    halves: int = 6,
) -> list[tuple[str, list[str], list[str]]]:
    """The (label, offline, online) splits of a protocol: ``online``: the offline datasets, then
    the others; ``leave_one_family_out``: per family, the datasets of that family online and all
    others offline; ``leave_one_offline_out``: per offline dataset, that one online and the other
    offline datasets offline; ``offline_halves``: ``halves`` seeded random halves of the offline
    datasets online, the other half offline. The last two see no online dataset: settings are
    chosen on them before any online result is seen (leave-one-out for what acts within a task,
    the halves, a sequence of several tasks, for what acts between tasks: the online updates)."""
    if protocol == "online":
        return [("online", list(offline), [n for n in names if n not in offline])]
    if protocol == "leave_one_family_out":
        every = sorted({f for n in names for f in families[n]})
        return [(f, [n for n in names if f not in families[n]], [n for n in names if f in families[n]]) for f in every]
    if protocol == "leave_one_offline_out":
        return [(n, [o for o in offline if o != n], [n]) for n in offline]
    if protocol == "offline_halves":
        rng = np.random.default_rng([seed, 3])
        out = []
        for k in range(halves):
            order = [offline[i] for i in rng.permutation(len(offline))]
            half = len(order) // 2
            out.append((f"half{k}", sorted(order[half:]), sorted(order[:half])))
        return out
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def online_groups(
    online: Sequence[str], offline: Sequence[str], families: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The online datasets as reported: ``seen`` (a family of theirs is among the offline
    datasets' families), ``held_out`` (none is) and ``all``."""
    known = {f for n in offline for f in families[n]}
    seen = [n for n in online if set(families[n]) & known]
    held = [n for n in online if not set(families[n]) & known]
    groups = {"seen": seen, "held_out": held, "all": list(online)}
    return {k: v for k, v in groups.items() if v}


def evaluate_table(
    table_csv: str,
    table_config: str,
    out: str | Path,
    methods: Sequence[str | Mapping[str, Any]] = DEFAULT_METHODS,
    source: str = "wider",
    offline: Sequence[str] | None = None,
    online: Sequence[str] | None = None,
    features: str = "detector",
    stats: str = "label_stats",
    resnet: str = "timm:resnet18",
    runs: int = 10,
    budget: int = 4,
    warmup_steps: int = 1000,
    seed: int = 0,
    cache: str = "runs/hyperfd/features",
    progress: Callable[[str], None] | None = None,
    protocol: str = "online",
    table_noise: bool = False,
    bootstrap_samples: int = 2000,
    focus: Sequence[str] = ("hyperfd", "similar_portfolio"),
    workers: int = 1,
) -> Evaluation:
    """HyperFD and its baselines on a lookup table: warm every method up on the offline datasets,
    meet the online datasets in ``runs`` random orders with ``budget`` evaluations each, and write
    ``evaluation.md``, ``summary.json``, ``runs.csv`` and ``rank_by_task.png`` into ``out``.

    ``methods``: names of :data:`~facenas.hyperfd.methods.METHODS` or ``{name, method, <options>}``
    readings. ``protocol``: ``online`` (the offline datasets are ``offline``, default those named
    ``<source>*``; the online ones the others or ``online``), ``leave_one_family_out`` or
    ``leave_one_offline_out`` or ``offline_halves`` (:func:`protocol_splits`; families from the table YAML,
    :func:`dataset_families`). ``table_noise``: each run draws the seed entries of the
    configurations with repeats. The average rank is reported with a bootstrap over runs and
    datasets per group of online datasets (``seen`` / ``held_out`` families, ``all``; per family
    for leave-one-family-out), and the plain verdicts for the ``focus`` methods. ``workers``: runs
    evaluated at once, one process each (the result does not depend on it).

    Raises:
        ValueError: an unknown method, or a table or dataset that does not fit.
        KeyError, FileNotFoundError: a dataset or file that is not there.
    """
    from facenas.hyperfd.methods import METHODS, create_method, method_specs
    from facenas.hyperfd.online import (
        bootstrap,
        bootstrap_markdown,
        markdown,
        random_rank_closed_form,
        read_table,
        summarize_runs,
    )
    from facenas.hyperfd.online import evaluate as run_evaluate

    specs = method_specs(methods)
    table = read_table(table_csv)
    space = next(iter(table.values())).space
    offline = list(offline or [n for n in table if n.startswith(source)])
    if protocol == "online" and online is not None:
        table = {n: d for n, d in table.items() if n in offline or n in online}
    families = dataset_families(table_config, list(table))
    splits = protocol_splits(protocol, list(table), offline, families, seed)
    roles = {"features": features, "stats": stats, "resnet": resnet}
    needed = {
        roles[v.strip("{}")]
        for method, options in specs.values()
        for v in {**METHODS[method][1], **options}.values()
        if isinstance(v, str) and v.startswith("{")
    }
    attach_features(table, table_config, list(table), needed, cache)

    def factory(method: str, options: Mapping[str, Any]):
        return lambda s: create_method(method, s, roles, space, source, warmup_steps, options)

    factories = {name: factory(method, options) for name, (method, options) in specs.items()}
    out = Path(out)
    settings = {"table": table_csv, "features": features, "stats": stats, "resnet": resnet}
    settings |= {"warmup_steps": warmup_steps}
    readings = {n: [m, o] for n, (m, o) in specs.items() if o or n != m}
    if readings:  # absent without any: journals of plain method names stay resumable
        settings["readings"] = readings
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[str]] = {}
    # a split of leave-one-family-out (or of the offline protocols) that puts the source online leaves
    # best-on-source nothing to copy; it is left out of the whole evaluation then, so that every
    # method is averaged over the same datasets (in the online protocol a source that is not offline
    # is the user's mistake, and best-on-source says so)
    sourceless = [label for label, off, on in splits if off and on and source not in off and protocol != "online"]
    left_out = [n for n, (m, _) in specs.items() if m == "best_on_source"] if sourceless else []
    factories = {n: f for n, f in factories.items() if n not in left_out}
    if not factories:
        raise ValueError(f"every method needs the source {source!r} offline, and protocol {protocol!r} puts it online")
    for label, split_offline, split_online in splits:
        if not split_offline or not split_online:
            continue  # a family on every dataset, or a lone offline dataset: nothing to learn from
        journal = out / ("journal.jsonl" if protocol == "online" else f"journal-{label}.jsonl")
        found = run_evaluate(
            table,
            factories,
            split_offline,
            split_online,
            runs=runs,
            budget=budget,
            seed=seed,
            progress=progress or (lambda line: None),
            journal=journal,
            journal_settings=settings,
            table_noise=table_noise,
            workers=workers,
        )
        if protocol == "online":
            groups = online_groups(split_online, split_offline, families)
        else:  # one group per split; a dataset online in two splits is two cells
            for r in found:
                r["dataset"] = f"{label}/{r['dataset']}"
            groups[label] = [f"{label}/{n}" for n in split_online]
        rows += found
    if not rows:
        raise ValueError(f"protocol {protocol!r} leaves no split with both offline and online datasets")
    if protocol != "online":
        groups["all"] = [d for members in groups.values() for d in members]
    summary = summarize_runs(rows)
    pools = {r["dataset"]: r["pool"] for r in rows}
    reference = {f"N={n}": random_rank_closed_form(n, budget)[0] for n in sorted(set(pools.values()))}
    group_reference = {
        g: float(np.mean([random_rank_closed_form(pools[d], budget)[0] for d in members if d in pools]))
        for g, members in groups.items()
    }
    text = markdown(summary, reference)
    if left_out:
        text += (
            f"\nNot run: {', '.join(left_out)}, whose source {source!r} is online in "
            + ", ".join(sourceless)
            + " (it copies the source's ranking, so it has none there).\n"
        )
    spread = bootstrap(rows, groups, bootstrap_samples, seed)
    summary["bootstrap"] = spread
    summary["groups"] = groups
    summary["families"] = {n: list(f) for n, f in families.items()}
    text += (
        f"\n**Average normalized rank by group, with its uncertainty** ({bootstrap_samples} resamples of the runs"
        + (", their seed entries of the table" if table_noise else "")
        + " and the online datasets; random search's closed form: "
        + ", ".join(f"{g} {v:.2f}" for g, v in group_reference.items())
        + ")\n\n"
        + bootstrap_markdown(spread, group_reference, [m for m in focus if m in factories])
    )
    if protocol == "online":
        sensitivity = ranker_sensitivity(table, offline, factories, seed, progress)
        if sensitivity:
            summary["dataset_sensitivity"] = sensitivity
            text += "\n" + sensitivity_markdown(sensitivity, len(table))
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.md").write_text(text)
    all_settings = settings | {
        "table_config": table_config,
        "source": source,
        "offline": offline,
        "online": None if online is None else list(online),
        "protocol": protocol,
        "table_noise": table_noise,
        "bootstrap_samples": bootstrap_samples,
        "runs": runs,
        "budget": budget,
        "seed": seed,
        "cache": cache,
        "out": str(out),
    }
    (out / "summary.json").write_text(json.dumps({"settings": all_settings, **summary}, indent=1, default=str))
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    png = plot_curves(summary, out / "rank_by_task.png")
    files = [out / "evaluation.md", out / "summary.json", out / "runs.csv", png]
    return Evaluation(text, out, files, summary)


def ranker_sensitivity(
    table: dict,
    offline: Sequence[str],
    factories: Mapping[str, Callable[[int], Any]],
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Per HyperFD method of ``factories`` (name -> a factory taking a seed): warmed up on the
    ``offline`` datasets with ``seed``, its :func:`~facenas.hyperfd.methods.dataset_sensitivity`
    over every dataset of ``table``."""
    import numpy as np

    from facenas.hyperfd.methods import HyperFD, dataset_sensitivity
    from facenas.hyperfd.online import single_thread

    found = {}
    for name, factory in factories.items():
        method = factory(seed)
        if not isinstance(method, HyperFD):
            continue
        if progress:
            progress(f"{name}: warming up once more to measure its dataset sensitivity")
        with single_thread():
            method.warmup([table[n] for n in offline], np.random.default_rng(seed))
            found[name] = dataset_sensitivity(method, list(table.values()))
    return found


def sensitivity_markdown(sensitivity: Mapping[str, float], datasets: int) -> str:
    """The dataset-sensitivity table of :func:`ranker_sensitivity`, with a verdict per ranker."""
    from facenas.hyperfd.methods import IGNORES_DATA

    lines = [
        f"**Dataset sensitivity after warm-up** (mean Spearman between the ranker's score vectors for the "
        f"{datasets} datasets; 1 = the same ranking for every dataset)",
        "",
        "| method | mean Spearman | |",
        "|---|---|---|",
    ]
    for name, value in sensitivity.items():
        verdict = f"above {IGNORES_DATA}: the ranker ignores the data" if value > IGNORES_DATA else ""
        lines.append(f"| {name} | {value:.3f} | {verdict} |")
    return "\n".join(lines) + "\n"


def default_ranker_path(table_csv: str, features: str) -> Path:
    """Where ``facenas hyperfd train`` writes a ranker state without ``--out``:
    ``runs/hyperfd/rankers/<table>-<extractor>.pt``, where ``<table>`` is the CSV's stem, or its
    folder's name for the ``table.csv`` that ``facenas hyperfd export`` writes into a table."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in features)
    csv = Path(table_csv).resolve()
    name = csv.parent.name if csv.stem == "table" and csv.parent.name else csv.stem
    return Path("runs/hyperfd/rankers") / f"{name}-{safe}.pt"


def train_ranker(
    table_csv: str,
    table_config: str,
    out: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    features: str = "detector",
    warmup_steps: int = 1000,
    seed: int = 0,
    cache: str = "runs/hyperfd/features",
) -> RankerState:
    """Train HyperFD's ranker on a lookup table (its datasets, or those named, as the platform's
    offline data) and save its state for the ``hyperfd`` search backend to ``out`` (default
    :func:`default_ranker_path`).

    Raises:
        ValueError: a dataset that is not in the table, or a table that does not fit.
        FileNotFoundError: a missing table or table config.
    """
    import numpy as np

    from facenas.core.progress import counting
    from facenas.hyperfd.backend import save_state
    from facenas.hyperfd.methods import HyperFD
    from facenas.hyperfd.online import read_table, single_thread

    table = read_table(table_csv)
    space = next(iter(table.values())).space
    names = list(datasets or table)
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"dataset {missing[0]!r} is not in {table_csv}")
    attach_features(table, table_config, names, {features}, cache)
    method = HyperFD(space=space, extractor=features, warmup_steps=warmup_steps, seed=seed)
    with single_thread(), counting(f"ranker warm-up ({warmup_steps} steps)"):
        method.warmup([table[n] for n in names], np.random.default_rng(seed))
    path = Path(out) if out is not None else default_ranker_path(table_csv, features)
    path.parent.mkdir(parents=True, exist_ok=True)
    return RankerState(Path(save_state(method.state(), path)), str(space), features, names)
