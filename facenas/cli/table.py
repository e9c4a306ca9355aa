"""``facenas benchmark build | export | report | augment``: HyperFD's performance lookup table."""

from __future__ import annotations

from facenas.core.errors import UserError

from .common import parse, tool_parser
from .search import _quiet_libraries


def build_parser(verb: str = "benchmark build"):
    """The options of ``facenas benchmark build`` (the keys of a benchmark YAML)."""
    parser = tool_parser(
        verb,
        "Build HyperFD's performance lookup table: train every configuration of the pool on every "
        "dataset (and the noise seeds), recording validation and test AP@50. Running it again finishes "
        "only what is missing.",
    )
    parser.add_argument("--name", type=str, required=True, help="the table's name (runs/benchmark/<name>)")
    parser.add_argument(
        "--datasets",
        type=list[dict],
        required=True,
        help="[{name: wider, data: {data.init_args keys}}, {name: masked, data: {synthetic_domains: [masked]}}]",
    )
    parser.add_argument("--space", type=str, required=True, help="hyperfd_hpo, hyperfd_nas, hyperfd_joint, ...")
    parser.add_argument(
        "--pool", type=dict, required=True, help="{all: true} | {n: 48, seed: 0} | {configs: [...]} (same per dataset)"
    )
    parser.add_argument("--mapping", type=dict[str, str], required=True, help="space parameter -> training key")
    parser.add_argument("--base", type=list[str], required=True, help="training YAML(s) every entry starts from")
    parser.add_argument("--overrides", type=dict, default={}, help="dotted training keys for every entry (the recipe)")
    parser.add_argument("--budget", type=float | None, default=None, help="epochs per entry")
    parser.add_argument("--seeds", type=list[int], default=[0], help="training seeds of the whole pool")
    parser.add_argument(
        "--noise", type=dict | None, default=None, help="{configs: 8, seeds: [1, 2]}: seed-noise entries"
    )
    parser.add_argument("--executor", type=str | dict, default="inprocess", help="inprocess, subprocess or dask")
    parser.add_argument("--root", type=str | None, default=None, help="table folder (default runs/benchmark/<name>)")
    return parser


def build(verb: str, argv: list[str]) -> int:
    from facenas.hyperfd.table.build import BenchmarkSettings
    from facenas.hyperfd.table.build import build as run_build

    args = parse(build_parser(verb), argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("config", "__path__")}
    try:
        settings = BenchmarkSettings(**fields)
        _quiet_libraries()
        counts = run_build(settings)  # SIGTERM / SIGINT: core.errors.Interrupted, exit code 143 / 130
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"benchmark {settings.name}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def export(verb: str, argv: list[str]) -> int:
    parser = tool_parser(verb, "Write a benchmark table as CSV, one row per entry.")
    parser.add_argument("table", type=str, help="the table's folder (runs/benchmark/<name>)")
    parser.add_argument("--out", type=str, required=True, help="the CSV file")
    args = parse(parser, argv)
    from facenas.hyperfd.table.build import export as run_export

    try:
        n = run_export(args.table, args.out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"{n} entries written to {args.out}")
    return 0


def report(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "Report on a benchmark table: AP distribution per dataset, validation-test rank correlation, best "
        "configuration, seed noise against the spread across configurations, and the Spearman correlation "
        "of configuration rankings between datasets (Markdown, JSON, PNGs).",
    )
    parser.add_argument("table", type=str, help="the table's folder (runs/benchmark/<name>)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default <table>/report)")
    args = parse(parser, argv)
    from facenas.hyperfd.table.report import write_report

    try:
        text, files = write_report(args.table, args.out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(text)
    print("written: " + ", ".join(str(f) for f in files))
    return 0


def augment(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "HyperFD's dataset augmentation by clustering (supplementary B.4, Table 5): cluster a dataset's "
        "images by meta-features with the nine set-ups and write each kept cluster as a subset split file "
        "(every image keeps its split; no image is copied). Use one as a dataset of a benchmark: "
        "{name: wider_c1, data: {split_file: <out>/<id>.json}}.",
    )
    parser.add_argument("--benchmark", type=str, required=True, help="the benchmark YAML that defines the dataset")
    parser.add_argument("--dataset", type=str, required=True, help="the dataset's name in that YAML")
    parser.add_argument(
        "--features", type=list[str], default=["label_stats"], help="extractors: label_stats, detector, timm:<name>"
    )
    parser.add_argument("--out", type=str, required=True, help="folder of the subset split files and index")
    parser.add_argument("--setups", type=list[str] | None, default=None, help="clustering set-ups (default: all 9)")
    parser.add_argument("--n_clusters", type=list[int], default=[2, 3, 5, 7])
    parser.add_argument("--min_images", type=int, default=30, help="smallest sub-dataset (floor)")
    parser.add_argument("--min_fraction", type=float, default=0.05, help="smallest sub-dataset, share of the parent")
    parser.add_argument("--max_deviation", type=float, default=0.5, help="largest relative split-fraction change")
    parser.add_argument("--seed", type=int, default=0)
    args = parse(parser, argv)
    from facenas.hyperfd.features import extract_features
    from facenas.hyperfd.table.augment import SETUPS, Rules
    from facenas.hyperfd.table.augment import augment as run_augment
    from facenas.hyperfd.table.build import dataset_module

    try:
        data = dataset_module(args.benchmark, args.dataset)
        data.setup("fit")
        samples = [s for part in ("train", "val", "test") for s in data.splits.get(part, [])]
        splits = {s.name: part for part in ("train", "val", "test") for s in data.splits.get(part, [])}
        cache = f"{args.out}/features"
        features = {name: extract_features(samples, name, cache, args.dataset) for name in args.features}
        result = run_augment(
            samples,
            splits,
            features,
            args.out,
            setups=args.setups or tuple(SETUPS),
            n_clusters=args.n_clusters,
            rules=Rules(args.min_fraction, args.min_images, args.max_deviation),
            seed=args.seed,
            split_seed=data.hparams.seed,
            split_ratios=data.hparams.split_ratios,
        )
    except (KeyError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(result)
    return 0
