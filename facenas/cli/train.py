"""``facenas fit | validate | test | predict``: the LightningCLI of :mod:`facenas.training`, with
a short ``--help`` (the options of the configured model and data module) and LightningCLI's full
help behind ``--help_full``."""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HELP = ("-h", "--help")
FULL_HELP = "--help_full"

SUMMARIES = {
    "fit": "Train a model; then test its best checkpoint on the test split and print the final metrics.",
    "validate": "Run the validation loop of a model (--ckpt_path last|best|FILE) and print its metrics.",
    "test": "Run the test loop of a model (--ckpt_path last|best|FILE) and print its metrics.",
    "predict": "Write a model's predictions (detection files, embeddings) through the configured writer callbacks, "
    "for the data's test split or the photo, folder or video its images option names.",
}


def run(verb: str, argv: list[str]) -> int:
    """Run a LightningCLI subcommand; ``--help`` prints :func:`short_help`, ``--help_full`` LightningCLI's."""
    if wants_help(argv):
        print(short_help(verb, argv, SUMMARIES[verb]))
        return 0
    from facenas.training import FaceNASCLI

    FaceNASCLI([verb, *full_help(argv)])
    return 0


def wants_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for the short help (``-h``/``--help`` and no ``--help_full``)."""
    return any(a in HELP for a in argv) and FULL_HELP not in argv


def full_help(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--help_full`` turned into LightningCLI's own ``--help``."""
    return ["--help" if a == FULL_HELP else a for a in argv]


def _values(argv: Sequence[str], *names: str) -> list[str]:
    """The values given to options ``names`` (``--name VALUE`` or ``--name=VALUE``), in order."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                out.append(value)
            elif i + 1 < len(argv):
                out.append(argv[i + 1])
    return out


def configured(argv: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The ``model`` and ``data`` sections the command line configures (``{"model": {"class_path":
    ..., "init_args": {...}}, ...}``, later files and options winning) and one note per config
    file that could not be read."""
    import yaml

    sections: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
    notes = []

    def merge(key: str, value: Any) -> None:
        if isinstance(value, str):
            value = {"class_path": value}
        if not isinstance(value, dict):
            return
        section = sections[key]
        if "class_path" in value and value["class_path"] != section.get("class_path"):
            section.clear()
        section.update({k: v for k, v in value.items() if k != "init_args"})
        section.setdefault("init_args", {}).update(value.get("init_args") or {})

    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if name in ("-c", "--config"):
            try:
                content = yaml.safe_load(Path(value).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                notes.append(f"could not read {value}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
                continue
            for key in sections:
                if isinstance(content, dict) and key in content:
                    merge(key, content[key])
        elif name in ("--model", "--data", "--model.class_path", "--data.class_path"):
            merge(name[2:].split(".")[0], value)
    return sections, notes


def _resolve(class_path: str, kind: str) -> type:
    """The class of a ``class_path`` (dotted, or a bare name of a facenas model or data module)."""
    if "." in class_path:
        module, _, name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    from lightning.pytorch import LightningDataModule, LightningModule

    importlib.import_module("facenas.models" if kind == "model" else "facenas.datamodules")
    base = LightningModule if kind == "model" else LightningDataModule
    stack, seen = [base], set()
    while stack:
        cls = stack.pop()
        if cls.__name__ == class_path and cls is not base:
            return cls
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
    raise ImportError(f"no {kind} class named {class_path!r}")


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")


def option_lines(parser: Any, configured_values: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """One entry per option of a jsonargparse ``parser``: name, type, default (and the configured
    value, when the command line sets one), then its help, wrapped."""
    lines = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config", "print_config"):
            continue
        if action.default == "==SUPPRESS==":  # jsonargparse's config loader of a group
            continue
        name = action.option_strings[-1].rstrip("+")
        hint = getattr(action, "_typehint", None)
        kind = _type_name(hint) if hint is not None else ("flag" if action.nargs == 0 else "str")
        head = f"  {name}  {kind}, default {action.default!r}"
        key = action.dest[len(prefix) :] if prefix and action.dest.startswith(prefix) else None
        if configured_values and key in configured_values:
            head += f" (configured: {configured_values[key]!r})"
        lines.append(head)
        if action.help:
            help_text = action.help.replace("``", "`")
            lines += textwrap.wrap(help_text, 100, initial_indent="      ", subsequent_indent="      ")
    return lines


def _class_section(kind: str, section: dict[str, Any]) -> list[str]:
    from jsonargparse import ArgumentParser

    class_path = section.get("class_path")
    if not class_path:
        return []
    try:
        cls = _resolve(str(class_path), kind)
        parser = ArgumentParser()
        parser.add_class_arguments(cls, f"{kind}.init_args", fail_untyped=False, sub_configs=True)
    except Exception as exc:  # an import error of a user's class is worth one line, not a traceback
        return [f"{kind}: {class_path} (its options cannot be listed: {exc})", ""]
    prefix = f"{kind}.init_args."
    lines = [f"{kind}: {cls.__module__}.{cls.__qualname__} (set any as --{prefix}<name> VALUE)"]
    return lines + option_lines(parser, section.get("init_args"), prefix) + [""]


def short_help(
    verb: str, argv: Sequence[str], summary: str, extra_arguments: Callable[[Any], None] | None = None
) -> str:
    """The help of a LightningCLI verb: usage, how ``--config`` works, facenas's own options, and
    the options of the model and data module that the command line configures (``--config`` files,
    ``--model``/``--data`` classes); LightningCLI's full help is behind ``--help_full``."""
    lines = [
        f"usage: facenas {verb} [--config FILE.yaml ...] [--KEY VALUE ...] [--help_full]",
        "",
        *textwrap.wrap(summary, 100),
        "",
        "--config FILE.yaml: a YAML with any of the keys trainer, model, data, seed_everything, ckpt_path;",
        "  repeatable: later files and later options override earlier ones. Every key is also an option:",
        "  --trainer.max_epochs 5, --model.init_args.lr 0.01, --data.init_args.batch_size 8.",
        "--model CLASS, --data CLASS: the model or data module class (class_path) without a config file.",
    ]
    if verb in SUMMARIES:
        lines += [
            "--ckpt_path last|best|FILE: the checkpoint to start from (fit) or to evaluate; last and best are",
            "  found across the run's versions.",
            "--metrics_table BOOL (default true): print the final metrics as a table.",
        ]
    if verb == "fit":
        lines.append("--test_after_fit BOOL (default true): test the best checkpoint when training ends.")
    if verb == "predict":
        lines += [
            "--allow_random_weights BOOL (default false): predict with a model that has no trained weights (no",
            "  --ckpt_path, no weights or pretrained argument); refused otherwise.",
        ]
    lines += [
        "--print_config: print the resolved configuration and exit.",
        f"{FULL_HELP}: every LightningCLI option (the trainer's included).",
        "",
    ]
    if extra_arguments is not None:
        from jsonargparse import ArgumentParser

        parser = ArgumentParser()
        extra_arguments(parser)
        lines += [f"{verb}'s own options:", *option_lines(parser), ""]
    sections, notes = configured(argv)
    lines += notes
    listed = [line for kind in ("model", "data") for line in _class_section(kind, sections[kind])]
    if listed:
        lines += listed
    else:
        lines += [
            "Give --config FILE.yaml (or --model CLASS / --data CLASS) with --help to list the options of",
            f"its model and data module, e.g. facenas {verb} --config configs/detection/quickstart.yaml --help",
        ]
    return "\n".join(lines).rstrip()


def config_cli(verb: str, argv: list[str], summary: str, extra_arguments: Callable[[Any], None]) -> Any:
    """The configured (not run) ``FaceNASCLI`` of a verb that reads a training config and adds
    its own options (``probe``, ``export``), or None after printing the short help."""
    if wants_help(argv):
        print(short_help(verb, argv, summary, extra_arguments=extra_arguments))
        return None
    from facenas.training import FaceNASCLI

    return FaceNASCLI(
        full_help(argv),
        run=False,
        extra_arguments=extra_arguments,
        save_config_callback=None,
        parser_kwargs={"prog": f"facenas {verb}", "description": summary},
    )
