"""``facenas search run`` and ``facenas search report``."""

from __future__ import annotations

from facenas.core.errors import UserError

from .common import parse, tool_parser


def _quiet_libraries() -> None:
    """A study prints one line per trial: Lightning's and Optuna's per-trial chatter is held back
    (warnings still show). Set once for the process, here at the command line."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)


def search_parser(verb: str = "search run"):
    """The options of ``facenas search run`` (the keys of a search YAML)."""
    from jsonargparse.typing import PositiveFloat, PositiveInt

    from facenas.search.backends import BACKENDS
    from facenas.search.executors import EXECUTORS
    from facenas.search.spaces import SPACES

    parser = tool_parser(
        verb,
        "Search hyper-parameters and architectures: ask the backend, train each trial from the "
        "base YAML plus the trial's overrides, read its objectives from the logged metrics, record "
        "it in the study's SQLite store, tell the backend. Running an existing study again resumes it.",
    )
    parser.add_argument("--name", type=str, required=True, help="study name (store and runs under runs/search/<name>)")
    parser.add_argument(
        "--space",
        type=str,
        required=True,
        help=f"a registered space ({', '.join(SPACES.names())}) or a ConfigSpace .json",
    )
    parser.add_argument(
        "--objectives",
        type=list[dict[str, str | bool]],
        required=True,
        help="logged metrics to optimise, e.g. [{metric: val/error, mode: min}, {metric: val/ratio, "
        "mode: min, allow_nonfinite: true}]",
    )
    parser.add_argument("--base", type=list[str], default=[], help="training YAML(s) every trial starts from")
    parser.add_argument(
        "--mapping",
        type=dict[str, str],
        default={},
        help="dotted training key -> space parameter or template, e.g. {model.init_args.lr: lr, "
        "model.init_args.backbone: 'dpn_search_small_{edge1}{edge2}{edge3}'}",
    )
    parser.add_argument(
        "--backend",
        type=str | dict,
        default="random",
        help=f"a registered backend ({', '.join(BACKENDS.names())}), or {{class_path: ..., init_args: {{...}}}} "
        "(e.g. smac with facade: mf)",
    )
    parser.add_argument(
        "--executor",
        type=str | dict,
        default="inprocess",
        help=f"a registered executor ({', '.join(EXECUTORS.names())}), or {{class_path: ..., init_args: {{...}}}}: "
        "e.g. {class_path: subprocess, init_args: {workers: N, gpus: [...]}}",
    )
    parser.add_argument(
        "--budget",
        type=dict[str, float] | float | None,
        default=None,
        help="epochs per trial: a number, or {min: 25, max: 100, eta: 2} for multi-fidelity backends",
    )
    parser.add_argument("--budget_key", type=str, default="trainer.max_epochs", help="the training key the budget sets")
    parser.add_argument(
        "--n_trials", type=PositiveInt, default=20, help="finished trials to reach (counting earlier runs of the study)"
    )
    parser.add_argument(
        "--walltime", type=PositiveFloat | None, default=None, help="stop starting trials after this many seconds"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the backend's seed; trial i trains with seed_everything = seed + i"
    )
    parser.add_argument(
        "--storage", type=str | None, default=None, help="SQLite file (default runs/search/<name>/study.sqlite)"
    )
    parser.add_argument("--runs_dir", type=str | None, default=None, help="trial folders (default runs/search/<name>)")
    parser.add_argument("--overrides", type=dict, default={}, help="dotted training keys set for every trial")
    parser.add_argument(
        "--reference_point",
        type=list[float] | None,
        default=None,
        help="hypervolume reference (costs; max objectives negated)",
    )
    parser.add_argument(
        "--wandb",
        type=dict | None,
        default=None,
        help="log every trial to W&B ({project: facenas, ...}; offline unless WANDB_API_KEY or WANDB_MODE=online)",
    )
    parser.add_argument("--report", type=bool, default=True, help="write the report when the study ends")
    parser.add_argument("--resume", action="store_true", help="require an existing study and continue it")
    return parser


def study_settings(args):
    """The :class:`StudySettings` of parsed search options (one-line errors)."""
    from facenas.search.study import StudySettings

    fields = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "__path__")}
    try:
        return StudySettings(**fields)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def run(verb: str, argv: list[str]) -> int:
    from facenas.search.store import StudyStore
    from facenas.search.study import Study

    args = parse(search_parser(verb), argv)
    settings = study_settings(args)
    if args.resume:
        if not settings.store_path.is_file():
            raise UserError(f"nothing to resume: {settings.store_path} does not exist")
        try:
            saved = StudyStore(settings.store_path, read_only=True).get_meta("settings")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if saved is None:
            raise UserError(f"nothing to resume: {settings.store_path} holds no study")
    _quiet_libraries()
    try:
        Study(settings).run()  # SIGTERM / SIGINT: core.errors.Interrupted, exit code 143 / 130
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


def report(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "Report on a study: trials table, best configuration or Pareto front, hypervolume "
        "against evaluations, PNG plots, and the best configuration(s) as training YAML.",
    )
    parser.add_argument("study", type=str, help="the study's name, folder, or SQLite file")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default: the study's folder)")
    args = parse(parser, argv)
    from facenas.search.report import find_study, write_report
    from facenas.search.store import StudyStore

    try:
        write_report(StudyStore(find_study(args.study), read_only=True), args.out)  # never writes the store
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0
