"""``facenas hyperfd build | export | report | augment | evaluate | train``: HyperFD's performance
lookup tables, its evaluation on one (supplementary Table 7) and a ranker state for the ``hyperfd``
search backend."""

from __future__ import annotations

from facenas.core.errors import UserError

from .common import file_error, parse, tool_parser
from .search import _quiet_libraries


def build_parser(verb: str = "hyperfd build"):
    """The options of ``facenas hyperfd build`` (the keys of a table YAML in configs/hyperfd/)."""
    parser = tool_parser(
        verb,
        "Build HyperFD's performance lookup table: train every configuration of the pool on every "
        "dataset (and the noise seeds), recording validation and test AP@50. Running it again finishes "
        "only what is missing.",
    )
    parser.add_argument("--name", type=str, required=True, help="the table's name (runs/hyperfd/<name>)")
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
    parser.add_argument(
        "--mapping",
        type=dict[str, str],
        required=True,
        help="dotted training key -> space parameter or template, as in a search YAML, e.g. {model.init_args.lr: lr}",
    )
    parser.add_argument("--base", type=list[str], required=True, help="training YAML(s) every entry starts from")
    parser.add_argument("--overrides", type=dict, default={}, help="dotted training keys for every entry (the recipe)")
    parser.add_argument("--budget", type=float | None, default=None, help="epochs per entry")
    parser.add_argument("--seeds", type=list[int], default=[0], help="training seeds of the whole pool")
    parser.add_argument(
        "--noise", type=dict | None, default=None, help="{configs: 8, seeds: [1, 2]}: seed-noise entries"
    )
    parser.add_argument("--executor", type=str | dict, default="inprocess", help="inprocess, subprocess or dask")
    parser.add_argument("--root", type=str | None, default=None, help="table folder (default runs/hyperfd/<name>)")
    parser.add_argument(
        "--shard",
        type=str | None,
        default=None,
        help="K/N: build only every N-th study from the K-th on, so that N builds started side by side share "
        "the table (each with the in-process executor: no per-entry start-up)",
    )
    return parser


def table_settings(args):
    """The :class:`~facenas.hyperfd.table.build.TableConfig` of parsed ``hyperfd build`` options
    (without the options of the command itself, such as ``--shard``)."""
    from facenas.hyperfd.table.build import TableConfig

    return TableConfig(**{k: v for k, v in vars(args).items() if k not in ("config", "__path__", "shard")})


def build(verb: str, argv: list[str]) -> int:
    from facenas.hyperfd.table.build import build as run_build

    args = parse(build_parser(verb), argv)
    try:
        settings = table_settings(args)
        shard = _shard(args.shard)
        _quiet_libraries()
        counts = run_build(settings, shard=shard)  # SIGTERM / SIGINT: core.errors.Interrupted, exit code 143 / 130
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"table {settings.name}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--shard takes K/N with 1 <= K <= N, got {text!r}")
    return int(k), int(n)


def export(verb: str, argv: list[str]) -> int:
    parser = tool_parser(verb, "Write a lookup table as CSV, one row per entry.")
    parser.add_argument("table", type=str, help="the table's folder (runs/hyperfd/<name>)")
    parser.add_argument("--out", type=str | None, default=None, help="the CSV file (default <table>/table.csv)")
    args = parse(parser, argv)
    from pathlib import Path

    from facenas.hyperfd.table.build import export as run_export

    out = args.out or str(Path(args.table) / "table.csv")
    try:
        n = run_export(args.table, out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"{n} entries written to {out}")
    return 0


def report(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "Report on a lookup table: AP distribution per dataset, validation-test rank correlation, best "
        "configuration, seed noise against the spread across configurations, and the Spearman correlation "
        "of configuration rankings between datasets (Markdown, JSON, PNGs); then whether the table can tell "
        "search methods apart (cross-dataset disagreement, optimiser x lr share of the rank variance, best vs "
        "upper quartile against the seed noise, a fixed portfolio against the oracle).",
    )
    parser.add_argument("table", type=str, help="the table's folder (runs/hyperfd/<name>)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default <table>/report)")
    parser.add_argument(
        "--source", type=str | None, default=None, help="dataset whose top configurations make the fixed portfolio"
    )
    parser.add_argument("--budget", type=int, default=2, help="size of the fixed portfolio")
    args = parse(parser, argv)
    from facenas.hyperfd.table.report import write_report

    try:
        text, files = write_report(args.table, args.out, args.source, args.budget)
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
        "(every image keeps its split; no image is copied). Use one as a dataset of a table: "
        "{name: wider_c1, data: {split_file: <out>/<id>.json}}.",
    )
    parser.add_argument(
        "--table_config", type=str, required=True, help="the table YAML (configs/hyperfd/) that defines the dataset"
    )
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
        data = dataset_module(args.table_config, args.dataset)
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
    except FileNotFoundError as exc:
        raise UserError(file_error(exc)) from None
    except (KeyError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(result)
    return 0


def _table_arguments(parser) -> None:
    parser.add_argument("--table", type=str, required=True, help="the table's CSV (facenas hyperfd export)")
    parser.add_argument(
        "--table_config", type=str, required=True, help="the table YAML (configs/hyperfd/): each dataset's images"
    )


def evaluate(verb: str, argv: list[str]) -> int:
    from facenas.hyperfd.table.evaluation import DEFAULT_METHODS, evaluate_table

    parser = tool_parser(
        verb,
        "HyperFD's evaluation (supplementary Table 7) on a lookup table: warm up every method on the offline "
        "datasets, then meet the online datasets in random orders, B evaluations each; report the test AP of "
        "the configuration kept and its normalized rank, per dataset and on average, and the rank by task index.",
    )
    _table_arguments(parser)
    parser.add_argument(
        "--methods",
        type=list[str | dict],
        default=list(DEFAULT_METHODS),
        help="methods to compare (random, best_on_source, tr_automl, hyperstar, scot, zero_shot, hyperfd_resnet, "
        "hyperfd_stats, hyperfd_mse, hyperfd, similar_portfolio), or readings {name, method, <options>}, e.g. "
        "{name: hyperfd_alg1, method: hyperfd, ratio: [0, 1, 1]}",
    )
    parser.add_argument(
        "--protocol",
        type=str,
        default="online",
        help="online (offline datasets, then the others), leave_one_family_out, or leave_one_offline_out / "
        "offline_halves (to choose settings on the offline datasets alone)",
    )
    parser.add_argument(
        "--table_noise",
        type=bool,
        default=False,
        help="each run draws which seed's entry a configuration with seed repeats has",
    )
    parser.add_argument("--bootstrap_samples", type=int, default=2000, help="resamples of runs and datasets")
    parser.add_argument(
        "--focus",
        type=list[str],
        default=["hyperfd", "similar_portfolio"],
        help="methods whose verdicts against every other method are stated",
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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs evaluated at once, one process each (the result does not depend on it)",
    )
    parser.add_argument("--out", type=str, default="runs/hyperfd/evaluation", help="report folder")
    args = parse(parser, argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("config", "__path__", "table")}
    try:
        result = evaluate_table(args.table, progress=print, **fields)
    except FileNotFoundError as exc:
        raise UserError(file_error(exc)) from None
    except (KeyError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(result.text)
    print("written: " + ", ".join(str(f) for f in result.files))
    return 0


def train(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "Train HyperFD's ranker on a lookup table (every dataset of it, or those named, as the platform's "
        "offline data) and save its state for the hyperfd search backend.",
    )
    _table_arguments(parser)
    parser.add_argument("--datasets", type=list[str] | None, default=None, help="datasets to learn from (default: all)")
    parser.add_argument("--features", type=str, default="detector", help="the meta-feature extractor")
    parser.add_argument("--warmup_steps", type=int, default=1000, help="ranker steps on the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=str, default="runs/hyperfd/features", help="per-image feature cache")
    parser.add_argument(
        "--out",
        type=str | None,
        default=None,
        help="the ranker state file (.pt; default runs/hyperfd/rankers/<table stem>-<features>.pt)",
    )
    args = parse(parser, argv)
    from facenas.hyperfd.table.evaluation import train_ranker

    fields = {k: v for k, v in vars(args).items() if k not in ("config", "__path__", "table")}
    try:
        state = train_ranker(args.table, **fields)
    except FileNotFoundError as exc:
        raise UserError(file_error(exc)) from None
    except (KeyError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(
        f"ranker state ({state.space}, {state.features} features, {len(state.datasets)} datasets) "
        f"written to {state.path}"
    )
    return 0
