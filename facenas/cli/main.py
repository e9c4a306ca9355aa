"""Dispatch: the verb table, the generated usage text, and the one place where user errors
become one line and an exit code."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    """A verb: its words, the section of the usage text, one line of help, an example, and
    the handler (``module:function`` in this package) that takes the remaining arguments."""

    words: str
    section: str
    summary: str
    example: str
    handler: str


VERBS: tuple[Verb, ...] = (
    Verb(
        "fit",
        "Training (LightningCLI)",
        "train a model",
        "facenas fit --config configs/detection/quickstart.yaml",
        "train:run",
    ),
    Verb(
        "validate",
        "Training (LightningCLI)",
        "run the validation loop",
        "facenas validate --config x.yaml --ckpt_path best",
        "train:run",
    ),
    Verb(
        "test",
        "Training (LightningCLI)",
        "run the test loop",
        "facenas test --config x.yaml --ckpt_path best",
        "train:run",
    ),
    Verb(
        "predict",
        "Training (LightningCLI)",
        "write predictions (detection files, embeddings)",
        "facenas predict --config x.yaml --ckpt_path best",
        "train:run",
    ),
    Verb(
        "probe",
        "Training (LightningCLI)",
        "linear probes of a protected attribute on a trained model",
        "facenas probe --config x.yaml --ckpt best.ckpt --attribute gender",
        "probe:run",
    ),
    Verb(
        "eval-detections",
        "Evaluation and data",
        "AP@50 of WIDER-format prediction files",
        "facenas eval-detections --gt gt.txt --pred preds/",
        "eval_detections:run",
    ),
    Verb(
        "fairness-report",
        "Evaluation and data",
        "identification error and fairness of saved embeddings",
        "facenas fairness-report --embeddings e.npy --meta meta.csv",
        "fairness_report:run",
    ),
    Verb(
        "fairness-compare",
        "Evaluation and data",
        "bias-mitigation methods x models by (error; fairness metric), Pareto-optimal marked",
        "facenas fairness-compare --runs '[runs/cmp/version_0, runs/cmp/version_1]' --out runs/cmp/compare",
        "fairness_compare:run",
    ),
    Verb(
        "evaluate-transfer",
        "Evaluation and data",
        "a FaceID checkpoint on pair sets (verification) and on another protected attribute",
        "facenas evaluate-transfer --ckpt best.ckpt --sets '[lfw.bin, cfp_fp.bin]' --identification rfw.csv",
        "evaluate_transfer:run",
    ),
    Verb(
        "data check",
        "Evaluation and data",
        "read a dataset; report every dropped or repaired box and image",
        "facenas data check --format wider --annotations gt.txt --images images/",
        "data:check",
    ),
    Verb(
        "data synth",
        "Evaluation and data",
        "write a synthetic detection or identity set in the real formats",
        "facenas data synth --out data/synth --images 60",
        "data:synth",
    ),
    Verb(
        "search",
        "Search",
        "run or resume a study",
        "facenas search --config configs/search/detection_quickstart.yaml",
        "search:run",
    ),
    Verb(
        "search-report",
        "Search",
        "report on a study: trials, Pareto front, best YAML",
        "facenas search-report detection_quickstart",
        "search:report",
    ),
    Verb(
        "benchmark build",
        "HyperFD benchmark",
        "train a performance lookup table: every pool configuration on every dataset",
        "facenas benchmark build --config configs/hyperfd/tiny.yaml",
        "benchmark:build",
    ),
    Verb(
        "benchmark export",
        "HyperFD benchmark",
        "a lookup table as CSV, one row per entry",
        "facenas benchmark export runs/benchmark/tiny --out table.csv",
        "benchmark:export",
    ),
    Verb(
        "benchmark report",
        "HyperFD benchmark",
        "a lookup table's AP spread, seed noise, best configurations, cross-dataset correlations",
        "facenas benchmark report runs/benchmark/tiny",
        "benchmark:report",
    ),
    Verb(
        "benchmark augment",
        "HyperFD benchmark",
        "cluster a dataset into sub-datasets (subset split files) by meta-features",
        "facenas benchmark augment --benchmark b.yaml --dataset wider --features label_stats --out data/subsets",
        "benchmark:augment",
    ),
    Verb(
        "hyperfd evaluate",
        "HyperFD benchmark",
        "HyperFD and its baselines on a lookup table: test AP and normalized rank (Table 7)",
        "facenas hyperfd evaluate --table table.csv --benchmark configs/hyperfd/tiny.yaml",
        "hyperfd:evaluate",
    ),
    Verb(
        "hyperfd train",
        "HyperFD benchmark",
        "train HyperFD's ranker on a lookup table: a state for the hyperfd search backend",
        "facenas hyperfd train --table table.csv --benchmark b.yaml --out ranker.pt",
        "hyperfd:train",
    ),
)


def usage() -> str:
    """The top-level help, generated from :data:`VERBS`."""
    lines = ["usage: facenas <verb> [--config FILE.yaml ...] [options]", ""]
    width = max(len(v.words) for v in VERBS) + 2
    for section in dict.fromkeys(v.section for v in VERBS):
        lines.append(f"{section}:")
        lines += [f"  {v.words:<{width}} {v.summary}" for v in VERBS if v.section == section]
        lines.append("")
    lines += ["Examples:"] + [f"  {v.example}" for v in VERBS if v.words in ("fit", "search", "eval-detections")] + [""]
    lines += [
        "Every verb takes --config FILE.yaml (repeatable; keys are the option names) and -h/--help.",
        "A user error prints one line and exits with code 2; a training that fails exits with code 1.",
    ]
    return "\n".join(lines)


def _find(argv: list[str]) -> tuple[Verb | None, list[str]]:
    for verb in VERBS:
        words = verb.words.split()
        if argv[: len(words)] == words:
            return verb, argv[len(words) :]
    return None, argv


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


def _process_settings() -> None:
    """Process-wide settings, made once here and never inside library code."""
    import logging
    import warnings

    # "Seed set to N" on every command: the seed is in the saved config.yaml
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning's own use of APIs that newer torch deprecates: not the user's to fix
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # facenas passes the command line to LightningCLI as a list on purpose
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # like `python -m`, let configs name classes of modules in the working directory
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facenas`` console script and ``python -m facenas``."""
    _die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"facenas {version('facenas')}")
        return 0
    verb, rest = _find(argv)
    name = verb.words if verb is not None else argv[0]
    groups = {v.words.split()[0] for v in VERBS if " " in v.words}  # data, benchmark
    if verb is None and argv[0] in groups and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        subverbs = [v for v in VERBS if v.words.startswith(f"{argv[0]} ")]
        print(f"usage: facenas {argv[0]} {{" + ",".join(v.words.split()[1] for v in subverbs) + "} [options]\n")
        print("\n".join(f"  {v.words.split()[1]:<7} {v.summary}" for v in subverbs))
        return 0 if len(argv) > 1 else 2
    _process_settings()
    from facenas.core.errors import Interrupted, UserError

    try:
        if verb is None:
            known = ", ".join(v.words for v in VERBS)
            what = f"data verb {argv[1]!r}" if argv[0] == "data" else f"verb {argv[0]!r}"
            raise UserError(f"unknown {what}; choose from {known} (facenas --help)")
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
