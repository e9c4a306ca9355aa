"""Dispatch: the verb table, the generated usage text and CLI reference, the deprecated
spellings, and the one place where user errors become one line and an exit code."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    """A verb: its words, the section of the usage text, one line of help, an example, the
    handler (``module:function`` in this package) that takes the remaining arguments, and the
    deprecated option names it still accepts (``(old, new)`` pairs)."""

    words: str
    section: str
    summary: str
    example: str
    handler: str
    renamed_options: tuple[tuple[str, str], ...] = ()


TRAINING = "Training (LightningCLI)"
CKPT = (("--ckpt", "--ckpt_path"),)
TABLE_CONFIG = (("--benchmark", "--table_config"),)

#: the groups of ``facenas <group> <verb>`` and their one-line summaries, in the order of the usage text
GROUPS: dict[str, str] = {
    "data": "Data",
    "eval": "Evaluation",
    "search": "Search",
    "hyperfd": "HyperFD (performance lookup tables and the learned ranker)",
}

VERBS: tuple[Verb, ...] = (
    Verb("fit", TRAINING, "train a model", "facenas fit --config configs/detection/quickstart.yaml", "train:run"),
    Verb(
        "validate",
        TRAINING,
        "run the validation loop",
        "facenas validate --config x.yaml --ckpt_path best",
        "train:run",
    ),
    Verb("test", TRAINING, "run the test loop", "facenas test --config x.yaml --ckpt_path best", "train:run"),
    Verb(
        "predict",
        TRAINING,
        "write predictions (detection files, embeddings)",
        "facenas predict --config x.yaml --ckpt_path best",
        "train:run",
    ),
    Verb(
        "probe",
        TRAINING,
        "linear probes of a protected attribute on a trained model",
        "facenas probe --config x.yaml --ckpt_path best.ckpt --attribute gender",
        "probe:run",
        CKPT,
    ),
    Verb(
        "export",
        TRAINING,
        "write a trained detector (ONNX, TorchScript) or embedding network (ONNX) for another runtime",
        "facenas export --config configs/detection/pretrained.yaml --out detector.onnx",
        "export:run",
    ),
    Verb(
        "data check",
        GROUPS["data"],
        "read a dataset; report every dropped or repaired box and image",
        "facenas data check --format wider --annotations gt.txt --images images/",
        "data:check",
    ),
    Verb(
        "data synth",
        GROUPS["data"],
        "write a synthetic detection or identity set in the real formats",
        "facenas data synth --out data/synth --images 60",
        "data:synth",
    ),
    Verb(
        "eval detections",
        GROUPS["eval"],
        "AP@50 of WIDER-format prediction files",
        "facenas eval detections --gt gt.txt --pred preds/",
        "eval.detections:run",
    ),
    Verb(
        "eval fairness",
        GROUPS["eval"],
        "identification error and fairness of saved embeddings",
        "facenas eval fairness --embeddings e.npy --meta meta.csv",
        "eval.fairness:run",
    ),
    Verb(
        "eval compare",
        GROUPS["eval"],
        "bias-mitigation methods x models by (error; fairness metric), Pareto-optimal marked",
        "facenas eval compare --runs '[runs/cmp/version_0, runs/cmp/version_1]' --out runs/cmp/compare",
        "eval.compare:run",
    ),
    Verb(
        "eval transfer",
        GROUPS["eval"],
        "a FaceID checkpoint on pair sets (verification) and on another protected attribute",
        "facenas eval transfer --ckpt_path best.ckpt --sets '[lfw.bin, cfp_fp.bin]' --identification rfw.csv",
        "eval.transfer:run",
        CKPT,
    ),
    Verb(
        "search run",
        GROUPS["search"],
        "run or resume a study",
        "facenas search run --config configs/search/detection_quickstart.yaml",
        "search:run",
    ),
    Verb(
        "search report",
        GROUPS["search"],
        "report on a study: trials, Pareto front, best YAML",
        "facenas search report detection_quickstart",
        "search:report",
    ),
    Verb(
        "hyperfd build",
        GROUPS["hyperfd"],
        "train a performance lookup table: every pool configuration on every dataset",
        "facenas hyperfd build --config configs/hyperfd/tiny.yaml",
        "hyperfd:build",
    ),
    Verb(
        "hyperfd export",
        GROUPS["hyperfd"],
        "a lookup table as CSV, one row per entry",
        "facenas hyperfd export runs/hyperfd/tiny",
        "hyperfd:export",
    ),
    Verb(
        "hyperfd report",
        GROUPS["hyperfd"],
        "a lookup table's AP spread, seed noise, best configurations, cross-dataset correlations",
        "facenas hyperfd report runs/hyperfd/tiny",
        "hyperfd:report",
    ),
    Verb(
        "hyperfd augment",
        GROUPS["hyperfd"],
        "cluster a dataset into sub-datasets (subset split files) by meta-features",
        "facenas hyperfd augment --table_config configs/hyperfd/tiny.yaml --dataset wider --out data/subsets",
        "hyperfd:augment",
        TABLE_CONFIG,
    ),
    Verb(
        "hyperfd evaluate",
        GROUPS["hyperfd"],
        "HyperFD and its baselines on a lookup table: test AP and normalized rank (Table 7)",
        "facenas hyperfd evaluate --table runs/hyperfd/tiny/table.csv --table_config configs/hyperfd/tiny.yaml",
        "hyperfd:evaluate",
        TABLE_CONFIG,
    ),
    Verb(
        "hyperfd train",
        GROUPS["hyperfd"],
        "train HyperFD's ranker on a lookup table: a state for the hyperfd search backend",
        "facenas hyperfd train --table runs/hyperfd/tiny/table.csv --table_config configs/hyperfd/tiny.yaml",
        "hyperfd:train",
        TABLE_CONFIG,
    ),
)

#: deprecated spellings of verbs (hidden from the help; each prints one line on stderr): old -> new words
DEPRECATED_VERBS: dict[str, str] = {
    "eval-detections": "eval detections",
    "fairness-report": "eval fairness",
    "fairness-compare": "eval compare",
    "evaluate-transfer": "eval transfer",
    "search-report": "search report",
    "search": "search run",  # `facenas search --config x.yaml`: an option where the verb belongs
    "benchmark build": "hyperfd build",
    "benchmark export": "hyperfd export",
    "benchmark report": "hyperfd report",
    "benchmark augment": "hyperfd augment",
}
#: deprecated groups: old group word -> new one (an unknown verb after it is reported against the new group)
DEPRECATED_GROUPS: dict[str, str] = {"benchmark": "hyperfd"}

HELP = ("-h", "--help")


def _verb(words: str) -> Verb:
    return next(v for v in VERBS if v.words == words)


def groups() -> dict[str, list[Verb]]:
    """The verbs of each group (``facenas <group> <verb>``), in table order."""
    return {g: [v for v in VERBS if v.words.split()[0] == g and " " in v.words] for g in GROUPS}


def group_usage(group: str) -> str:
    """The help of ``facenas <group>``: its verbs, one line each."""
    verbs = groups()[group]
    names = [v.words.split()[1] for v in verbs]
    width = max(len(n) for n in names) + 2
    lines = [f"usage: facenas {group} {{{','.join(names)}}} [options]", "", f"{GROUPS[group]}:"]
    lines += [f"  {n:<{width}} {v.summary}" for n, v in zip(names, verbs, strict=True)]
    lines += ["", f"facenas {group} <verb> --help lists the options of a verb."]
    return "\n".join(lines)


def usage() -> str:
    """The top-level help, generated from :data:`VERBS`."""
    lines = [
        "usage: facenas <verb> [--config FILE.yaml ...] [options]",
        "       facenas <group> <verb> [--config FILE.yaml ...] [options]",
        "",
    ]
    width = max(len(v.words) for v in VERBS) + 2
    for section in dict.fromkeys(v.section for v in VERBS):
        lines.append(f"{section}:")
        lines += [f"  {v.words:<{width}} {v.summary}" for v in VERBS if v.section == section]
        lines.append("")
    shown = ("fit", "search run", "eval detections")
    lines += ["Examples:"] + [f"  {v.example}" for v in VERBS if v.words in shown] + [""]
    lines += [
        "Every verb takes --config FILE.yaml (repeatable; keys are the option names) and -h/--help;",
        "facenas <group> lists the verbs of a group.",
        "A user error prints one line and exits with code 2; a training that fails exits with code 1.",
    ]
    return "\n".join(lines)


def reference_markdown() -> str:
    """The CLI reference (``docs/cli.md``), generated from :data:`VERBS` and the deprecated spellings."""
    lines = [
        "# The `facenas` command",
        "",
        "<!-- generated by `python -m facenas.cli.reference > docs/cli.md`; do not edit -->",
        "",
        "`facenas <verb>` for the training verbs (LightningCLI), `facenas <group> <verb>` for every other",
        "command. Every verb takes `--config FILE.yaml` (repeatable; its keys are the option names) and",
        "`-h`/`--help`; `facenas <group>` lists the verbs of a group. A user error prints one line and exits",
        "with code 2; a training that fails exits with code 1.",
        "",
        "The training verbs' `--help` lists the options of the model and data module of the given",
        "`--config` (or `--model` / `--data` class); `--help_full` prints every LightningCLI option.",
        "",
    ]
    for section in dict.fromkeys(v.section for v in VERBS):
        group = next((g for g, title in GROUPS.items() if title == section), None)
        lines += [f"## {section}" + (f" (`facenas {group}`)" if group else ""), ""]
        for verb in (v for v in VERBS if v.section == section):
            lines += [f"### `facenas {verb.words}`", "", f"{verb.summary[0].upper()}{verb.summary[1:]}.", ""]
            lines += ["```sh", verb.example, "```", ""]
    lines += [
        "## Deprecated spellings",
        "",
        "These still work for one release and print one line on stderr naming the new spelling.",
        "",
        "| deprecated | use |",
        "|---|---|",
    ]
    shown = {"search": "search --config FILE.yaml"}  # the old verb took its options directly
    lines += [f"| `facenas {shown.get(old, old)}` | `facenas {new}` |" for old, new in DEPRECATED_VERBS.items()]
    renamed = {pair: [v.words for v in VERBS if pair in v.renamed_options] for v in VERBS for pair in v.renamed_options}
    lines += [f"| `{old}` ({', '.join(verbs)}) | `{new}` |" for (old, new), verbs in renamed.items()]
    return "\n".join(lines) + "\n"


def _notice(old: str, new: str) -> None:
    print(f"facenas: {old!r} is deprecated; use {new!r}", file=sys.stderr)


def _find(argv: list[str]) -> tuple[Verb | None, list[str]]:
    """The verb that ``argv`` starts with (old spellings included: they print their notice) and
    the arguments after its words."""
    for verb in VERBS:
        words = verb.words.split()
        if argv[: len(words)] == words:
            return verb, argv[len(words) :]
    for old, new in DEPRECATED_VERBS.items():
        words = old.split()
        if argv[: len(words)] != words:
            continue
        rest = argv[len(words) :]
        if old == "search" and not (rest and rest[0].startswith("-") and rest[0] not in HELP):
            continue  # `facenas search` and `facenas search --help` are the group's help
        _notice(old, f"facenas {new}")
        return _verb(new), rest
    return None, argv


def _rename_options(verb: Verb, rest: list[str]) -> list[str]:
    """``rest`` with the verb's deprecated option names replaced (one notice per name)."""
    out = []
    for arg in rest:
        name, eq, value = arg.partition("=")
        new = dict(verb.renamed_options).get(name)
        if new is not None:
            _notice(name, new)
            arg = f"{new}{eq}{value}"
        out.append(arg)
    return out


def _unknown(argv: list[str]) -> str:
    """The one-line error of a command line that names no verb."""
    first = argv[0]
    group = DEPRECATED_GROUPS.get(first, first)
    if group in GROUPS:
        names = ", ".join(v.words.split()[1] for v in groups()[group])
        return f"unknown {group} verb {argv[1]!r}; choose from {names} (facenas {group} --help)"
    known = ", ".join([v.words for v in VERBS if " " not in v.words] + list(GROUPS))
    return f"unknown verb {first!r}; choose from {known} (facenas --help)"


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the process that started it dies, if that is a search
    runner (it sets ``FACENAS_PARENT_PID``): a trial whose Dask worker or study driver was killed
    must not go on writing into the folder where its re-run starts. Elsewhere: nothing."""
    parent = os.environ.pop("FACENAS_PARENT_PID", None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before the request took effect
        os._exit(1)


class _QuietLightning:
    """A logging filter for Lightning's rank-zero messages: no advertising tips, and the
    "GPU available / TPU available" banner only when an accelerator is used."""

    def __init__(self) -> None:
        self.banner = False

    def filter(self, record) -> bool:
        message = str(record.msg)
        if message.startswith("\U0001f4a1 Tip:"):
            return False
        if message.startswith("GPU available:"):
            self.banner = not message.endswith("used: False")
            return self.banner
        if message.startswith(("TPU available:", "HPU available:")):
            return self.banner or "using: 0 " not in message
        return True


_QUIET = _QuietLightning()


def _process_settings() -> None:
    """Process-wide settings, made once here and never inside library code."""
    import logging
    import warnings

    # "Seed set to N" on every command: the seed is in the saved config.yaml
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning's tips, and its accelerator banner on a CPU run
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)
    # Lightning's own use of APIs that newer torch deprecates: not the user's to fix
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # facenas passes the command line to LightningCLI as a list on purpose
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # a video's frames reach `facenas predict` as an IterableDataset, which has no batch indices;
    # facenas's prediction writers do not use them
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
    # like `python -m`, let configs name classes of modules in the working directory
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facenas`` console script and ``python -m facenas``."""
    _die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in HELP:
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"facenas {version('facenas')}")
        return 0
    group = DEPRECATED_GROUPS.get(argv[0], argv[0])
    if group in GROUPS and (len(argv) == 1 or argv[1] in HELP):
        if group != argv[0]:
            _notice(argv[0], f"facenas {group}")
        print(group_usage(group))
        return 0 if len(argv) > 1 else 2
    verb, rest = _find(argv)
    name = verb.words if verb is not None else " ".join(argv[:2] if group in GROUPS else argv[:1])
    _process_settings()
    from facenas.core.errors import Interrupted, UserError, config_file_error, config_files

    try:
        if verb is None:
            raise UserError(_unknown(argv))
        rest = _rename_options(verb, rest)
        for path in config_files(rest):  # an empty or broken --config file, by its name
            problem = config_file_error(path)
            if problem is not None:
                raise UserError(problem)
        module, _, function = verb.handler.partition(":")
        handler = getattr(importlib.import_module(f".{module}", __package__), function)
        return int(handler(verb.words, rest) or 0)
    except UserError as exc:
        print(f"facenas {name}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"facenas {name}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # facenas.models.NonFiniteLossError: a diverged training
        print(f"facenas {name}: training stopped: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:  # SIGTERM / SIGINT, stopped at a safe point (core.signals)
        print(f"facenas {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("facenas: interrupted", file=sys.stderr)
        return 130
