"""``facenas hyperfd evaluate | train``: HyperFD and its baselines on a performance lookup table
(supplementary Table 7), and a ranker state for the ``hyperfd`` search backend."""

from __future__ import annotations

from facenas.core.errors import UserError

from .common import parse, tool_parser


def _attach_features(table: dict, benchmark: str, datasets: list[str], extractors: set[str], cache: str) -> None:
    """Give each dataset of the table its per-image features of its training images (what its client
    holds), by extractor, cached per (dataset, extractor version)."""
    from facenas.hyperfd.features import create_extractor, extract_features
    from facenas.hyperfd.table.build import dataset_module

    built = {
        name: create_extractor(name, **({"allow_random": True} if name.startswith("timm:") else {}))
        for name in extractors
    }
    for dataset in datasets:
        data = dataset_module(benchmark, dataset)
        data.prepare_data()
        data.setup("fit")
        samples = data.splits["train"]
        table[dataset].features = {name: extract_features(samples, e, cache, dataset) for name, e in built.items()}


def evaluate(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "HyperFD's evaluation (supplementary Table 7) on a lookup table: warm up every method on the offline "
        "datasets, then meet the online datasets in random orders, B evaluations each; report the test AP of "
        "the configuration kept and its normalized rank, per dataset and on average, and the rank by task index.",
    )
    parser.add_argument("--table", type=str, required=True, help="the table's CSV (facenas benchmark export)")
    parser.add_argument(
        "--benchmark", type=str, required=True, help="the benchmark YAML (to read each dataset's images)"
    )
    parser.add_argument(
        "--methods",
        type=list[str],
        default=[
            "random",
            "best_on_source",
            "tr_automl",
            "hyperstar",
            "scot",
            "zero_shot",
            "hyperfd_stats",
            "hyperfd_mse",
            "hyperfd",
        ],
        help="methods to compare (random, best_on_source, tr_automl, hyperstar, scot, zero_shot, hyperfd_resnet, "
        "hyperfd_stats, hyperfd_mse, hyperfd)",
    )
    parser.add_argument("--source", type=str, default="wider", help="the source dataset (offline; best-on-source)")
    parser.add_argument(
        "--offline", type=list[str] | None, default=None, help="offline datasets (default: those named <source>*)"
    )
    parser.add_argument("--online", type=list[str] | None, default=None, help="online datasets (default: the others)")
    parser.add_argument("--features", type=str, default="detector", help="the meta-feature extractor of HyperFD")
    parser.add_argument("--stats", type=str, default="label_stats", help="extractor of the stats ablation and SCoT")
    parser.add_argument(
        "--resnet",
        type=str,
        default="timm:resnet18",
        help="extractor of the ResNet ablation (timm:<name>; without local weights a seeded random network)",
    )
    parser.add_argument("--runs", type=int, default=10, help="random orders of the online datasets")
    parser.add_argument("--budget", type=int, default=4, help="B: evaluations per online dataset")
    parser.add_argument("--warmup_steps", type=int, default=1000, help="ranker steps on the offline tables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=str, default="runs/hyperfd/features", help="per-image feature cache")
    parser.add_argument("--out", type=str, default="runs/hyperfd/evaluation", help="report folder")
    args = parse(parser, argv)

    import csv
    import json
    from pathlib import Path

    from facenas.hyperfd.methods import METHODS, create_method
    from facenas.hyperfd.online import evaluate as run_evaluate
    from facenas.hyperfd.online import markdown, random_rank_closed_form, read_table, summarize_runs

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    try:
        table = read_table(args.table)
        space = next(iter(table.values())).space
        offline = args.offline or [n for n in table if n.startswith(args.source)]
        roles = {"features": args.features, "stats": args.stats, "resnet": args.resnet}
        needed = {
            roles[v.strip("{}")]
            for m in args.methods
            for v in METHODS[m][1].values()
            if isinstance(v, str) and v.startswith("{")
        }
        _attach_features(table, args.benchmark, list(table), needed, args.cache)

        def factory(name: str):
            return lambda seed: create_method(name, seed, roles, space, args.source, args.warmup_steps)

        rows = run_evaluate(
            table,
            {m: factory(m) for m in args.methods},
            offline,
            args.online,
            runs=args.runs,
            budget=args.budget,
            seed=args.seed,
            progress=print,
            journal=Path(args.out) / "journal.jsonl",
            journal_settings={k: getattr(args, k) for k in ("table", "features", "stats", "resnet", "warmup_steps")},
        )
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    summary = summarize_runs(rows)
    pools = sorted({r["pool"] for r in rows})
    reference = {f"N={n}": random_rank_closed_form(n, args.budget)[0] for n in pools}
    text = markdown(summary, reference)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.md").write_text(text)
    (out / "summary.json").write_text(
        json.dumps({"settings": vars(args) | {"offline": offline}, **summary}, indent=1, default=str)
    )
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot_curves(summary, out / "rank_by_task.png")
    print(text)
    print(f"written: {out}/evaluation.md, summary.json, runs.csv, rank_by_task.png")
    return 0


def _plot_curves(summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, curve in summary["curves"].items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=method)
    ax.set_xlabel("online task index")
    ax.set_ylabel("mean normalized rank (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "Train HyperFD's ranker on a lookup table (every dataset of it, or those named, as the platform's "
        "offline data) and save its state for the hyperfd search backend.",
    )
    parser.add_argument("--table", type=str, required=True, help="the table's CSV (facenas benchmark export)")
    parser.add_argument(
        "--benchmark", type=str, required=True, help="the benchmark YAML (to read each dataset's images)"
    )
    parser.add_argument("--datasets", type=list[str] | None, default=None, help="datasets to learn from (default: all)")
    parser.add_argument("--features", type=str, default="detector", help="the meta-feature extractor")
    parser.add_argument("--warmup_steps", type=int, default=1000, help="ranker steps on the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=str, default="runs/hyperfd/features", help="per-image feature cache")
    parser.add_argument("--out", type=str, required=True, help="the ranker state file (.pt)")
    args = parse(parser, argv)

    import numpy as np

    from facenas.hyperfd.backend import save_state
    from facenas.hyperfd.methods import HyperFD
    from facenas.hyperfd.online import read_table, single_thread

    try:
        table = read_table(args.table)
        space = next(iter(table.values())).space
        names = args.datasets or list(table)
        missing = [n for n in names if n not in table]
        if missing:
            raise ValueError(f"dataset {missing[0]!r} is not in {args.table}")
        _attach_features(table, args.benchmark, names, {args.features}, args.cache)
        method = HyperFD(space=space, extractor=args.features, warmup_steps=args.warmup_steps, seed=args.seed)
        with single_thread():
            method.warmup([table[n] for n in names], np.random.default_rng(args.seed))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    path = save_state(method.state(), args.out)
    print(f"ranker state ({space}, {args.features} features, {len(names)} datasets) written to {path}")
    return 0
