"""facenas: face AutoML on PyTorch Lightning.

Verbs:

* ``fit | validate | test | predict``: LightningCLI over YAML configs (``class_path`` /
  ``init_args`` for ``model`` and ``data``), e.g. ``facenas fit --config configs/x.yaml``.
* ``eval-detections``: AP@50 of WIDER-format predictions against ground truth.
* ``fairness-report``: identification error and fairness metrics of saved embeddings.
* ``data check``: read a dataset, report every dropped or repaired box and image.
* ``data synth``: write a synthetic detection or identity set in the real formats.
* ``probe``: linear probes of a protected attribute on a trained identification model.
* ``search`` / ``search-report``: run or resume a study; report on it.

Every verb takes ``--config`` YAML files and ``--help``. User errors (a wrong key or type, a
missing file, an unknown class) end with one message and exit code 2.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")
TOOL_VERBS = ("eval-detections", "fairness-report", "data", "probe", "search", "search-report")

USAGE = """usage: facenas <verb> [--config FILE.yaml ...] [options]

Training (LightningCLI; `facenas <verb> --help` lists every option):
  fit              train a model:            facenas fit --config configs/x.yaml
  validate         run the validation loop:  facenas validate --config x.yaml --ckpt_path last
  test             run the test loop:        facenas test --config x.yaml --ckpt_path best
  predict          run prediction:           facenas predict --config x.yaml --ckpt_path best

Evaluation and data:
  eval-detections  AP@50 of WIDER-format predictions (MMDetection VOC semantics)
  fairness-report  identification error and fairness (FR-NAS metrics) of saved embeddings
  data check       read a dataset and report every dropped or repaired box and image

Options common to every verb: --config FILE (repeatable), --print_config, -h/--help.
"""


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


# --------------------------------------------------------------------------------------------
# fit / validate / test / predict


def _lightning_cli(argv: Sequence[str]) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.callbacks import (
        ModelCheckpoint,
        ProgressBar,
        RichProgressBar,
    )
    from lightning.pytorch.cli import LightningCLI

    class FaceNASCLI(LightningCLI):
        """LightningCLI with facenas defaults: CSV logs and checkpoints under ``runs/``, best
        (by the model's ``monitor``) and last checkpoints, a rich progress bar, ``--ckpt_path
        last|best`` resolved across runs, and W&B runs finished when the command ends."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--test_after_fit", type=bool, default=True,
                                help="fit: when training ends, test the best checkpoint on the data's test split")
            parser.set_defaults({
                "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": "runs", "name": "default"}},
                "trainer.default_root_dir": "runs",
            })

        def instantiate_trainer(self, **kwargs: Any):
            trainer_cfg = self._get(self.config_init, "trainer", default={})
            configured = trainer_cfg.get("callbacks") or []
            callbacks = list(configured if isinstance(configured, list) else [configured])
            if trainer_cfg.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
                callbacks.append(RichProgressBar())
            if trainer_cfg.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
                # "last" is its own unmonitored checkpoint, rewritten every epoch: Lightning's
                # save_last only refreshes it when the monitored metric improves
                callbacks.append(ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False))
                monitor = getattr(self.model, "monitor", None)
                if monitor:
                    callbacks.append(ModelCheckpoint(monitor=monitor, mode=getattr(self.model, "monitor_mode", "min"), save_top_k=1,
                                                     filename="best-{epoch:03d}", auto_insert_metric_name=False))
            # passing callbacks replaces the configured list, so it carries those too
            return super().instantiate_trainer(**kwargs, callbacks=callbacks)

        def _resolve_ckpt(self) -> None:
            cfg = self.config_init[self.subcommand]
            wanted = cfg.get("ckpt_path")
            if wanted not in ("last", "best"):
                if wanted is not None and not Path(wanted).is_file():
                    raise UserError(f"checkpoint not found: {wanted}")
                return
            found = find_checkpoint(self.trainer, wanted)
            if found is None:
                if self.subcommand == "fit" and wanted == "last":
                    print(f"facenas: no last checkpoint under {run_root(self.trainer)}; starting from scratch", file=sys.stderr)
                    cfg["ckpt_path"] = None
                    return
                raise UserError(f"no '{wanted}' checkpoint found under {run_root(self.trainer)}")
            if self.trainer.is_global_zero:
                print(f"facenas: using {wanted} checkpoint {found}", file=sys.stderr)
            cfg["ckpt_path"] = str(found)

        def before_fit(self) -> None:
            self._resolve_ckpt()

        def before_validate(self) -> None:
            self._resolve_ckpt()

        def before_test(self) -> None:
            self._resolve_ckpt()

        def before_predict(self) -> None:
            self._resolve_ckpt()

        def after_fit(self) -> None:
            trainer = self.trainer
            if self.config_init["fit"].get("test_after_fit") and not trainer.interrupted and _has_test_split(self.datamodule):
                best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path), "")
                fitted = dict(trainer.callback_metrics)
                trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=False)
                trainer.callback_metrics.update({k: v for k, v in fitted.items() if k not in trainer.callback_metrics})
            _print_metrics(trainer, "final metrics")

    cli = FaceNASCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if list(argv) == sys.argv[1:] else list(argv),
        run=True,
        parser_kwargs={"prog": "facenas", "exit_on_error": False,
                       "description": "Train and evaluate facenas models with YAML configs."},
    )
    from callbacks.loggers import finish_loggers

    finish_loggers(cli.trainer)
    return 0


def _has_test_split(datamodule) -> bool:
    if datamodule is None or not callable(getattr(datamodule, "test_dataloader", None)):
        return False
    try:
        return len(datamodule.test_dataloader()) > 0
    except (NotImplementedError, TypeError, KeyError, AttributeError):
        return False


def run_root(trainer) -> Path:
    """The folder holding a run's versions (``runs/<name>`` for the CSV logger)."""
    logger = trainer.logger
    if logger is not None and getattr(logger, "root_dir", None):
        return Path(logger.root_dir)
    if logger is not None and getattr(logger, "save_dir", None):
        return Path(logger.save_dir)
    return Path(trainer.default_root_dir)


def find_checkpoint(trainer, which: str) -> Path | None:
    """The newest ``last*.ckpt`` or ``best*.ckpt`` below the run's folder."""
    root = run_root(trainer)
    if not root.is_dir():
        return None
    found = sorted(root.rglob(f"{which}*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _print_metrics(trainer, title: str) -> None:
    if not trainer.is_global_zero or not trainer.callback_metrics:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(trainer.callback_metrics.items()):
        table.add_row(key, f"{float(value):.4f}")
    Console().print(table)


# --------------------------------------------------------------------------------------------
# eval-detections


def _tool_parser(prog: str, description: str):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=f"facenas {prog}", description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below (keys use underscores)")
    return parser


def _eval_detections(argv: Sequence[str]) -> int:
    from jsonargparse.typing import PositiveFloat

    parser = _tool_parser("eval-detections", "AP@IoU of WIDER-format predictions against ground truth, with "
                          "MMDetection's VOC semantics (ignored boxes neither help nor hurt; all-point AP).")
    parser.add_argument("--gt", type=str, required=True, help="ground-truth annotation file (or folder for voc/fddb)")
    parser.add_argument("--gt-format", type=str, default="wider", help="format of --gt: wider, retinaface, fddb, voc, dlib, coco")
    parser.add_argument("--pred", type=str, required=True, help="prediction folder in WIDER format: <event>/<image stem>.txt")
    parser.add_argument("--iou", type=PositiveFloat, default=0.5, help="IoU threshold of a true positive")
    parser.add_argument("--min-size", type=float, default=0.0, help="ignore ground truths (and unmatched detections) with sqrt(w*h) below this; HyperFD: 36")
    parser.add_argument("--images", type=str | None, default=None, help="image folder: needed for --short-side (image sizes)")
    parser.add_argument("--short-side", type=PositiveFloat | None, default=None, help="measure sizes after scaling each image to this shorter side; HyperFD: 720")
    parser.add_argument("--attributes", type=str | None, default=None, help="per-face attribute CSV (file, face_index, columns...), e.g. WIDER demographics_val.csv")
    parser.add_argument("--attribute-columns", type=list[str] | None, default=None, help="attribute columns to report AP for (default: all of the CSV's label columns)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(list(argv))
    if args.short_side is not None and args.images is None:
        parser.error("--short-side needs --images (sizes are read from the image files)")

    import numpy as np
    import torch

    from callbacks.detection_ap import evaluate_detections
    from datamodules.detection.formats import (
        attach_box_attributes,
        read_detection,
        read_wider_predictions,
    )
    from datamodules.progress import counting

    with counting("reading ground truth"):
        samples, report = read_detection(args.gt_format, args.gt, args.images, verify="header" if args.images else "none")
    preds = read_wider_predictions(args.pred, report)
    columns = attach_box_attributes(samples, args.attributes, columns=args.attribute_columns) if args.attributes else []
    empty = (np.zeros((0, 4)), np.zeros(0))
    keys = [Path(s.name).with_suffix("").as_posix() for s in samples]
    missing = [k for k in keys if k not in preds]
    pred_list = [tuple(torch.from_numpy(a) for a in preds.get(k, empty)) for k in keys]
    sizes = [(s.height, s.width) for s in samples] if args.short_side else None

    def evaluate(ignore_extra=None) -> dict:
        gts = []
        for i, s in enumerate(samples):
            ignore = s.ignore if ignore_extra is None else s.ignore | ignore_extra[i]
            gts.append((torch.from_numpy(s.boxes), torch.from_numpy(ignore)))
        return evaluate_detections(pred_list, gts, image_sizes=sizes, short_side=args.short_side,
                                   iou_threshold=args.iou, min_size=args.min_size).as_dict()

    result = evaluate()
    result.update({"num_images": len(samples), "images_without_predictions": len(missing), "iou": args.iou,
                   "min_size": args.min_size, "short_side": args.short_side})
    if columns:
        result["attributes"] = {}
        for col in columns:
            values = sorted({v for s in samples for v in s.attributes.get(col, []) if v is not None})
            result["attributes"][col] = {
                v: evaluate([np.array([lab != v for lab in s.attributes.get(col, [None] * len(s))], dtype=bool) for s in samples])
                for v in values
            }
    if report.issues:
        print(report.summary(), file=sys.stderr)
    if missing:
        print(f"facenas: {len(missing)} of {len(samples)} images have no prediction file (counted as no detections), "
              f"e.g. {missing[0]}", file=sys.stderr)
    if args.json:
        print(json.dumps(_json_safe(result)))
    else:
        _print_detection_table(result)
    return 0


def _print_detection_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"AP@{result['iou']:g} (min size {result['min_size']:g}"
                  + (f", short side {result['short_side']:g})" if result["short_side"] else ")"))
    for col in ("subset", "AP", "recall", "faces", "detections"):
        table.add_column(col, justify="left" if col == "subset" else "right")
    table.add_row("all", f"{result['ap50']:.4f}", f"{result['recall']:.4f}", str(result["num_gt"]), str(result["num_det"]))
    for col, groups in result.get("attributes", {}).items():
        for value, r in groups.items():
            table.add_row(f"{col}={value}", f"{r['ap50']:.4f}", f"{r['recall']:.4f}", str(r["num_gt"]), str(r["num_det"]))
    Console().print(table)


def _json_safe(value: Any) -> Any:
    """Non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# fairness-report


def _fairness_report(argv: Sequence[str]) -> int:
    parser = _tool_parser("fairness-report", "Identification error and FR-NAS fairness metrics (rank disparity, "
                          "disparity, ratio, rank ratio, error ratio) of saved embeddings.")
    parser.add_argument("--embeddings", type=str, required=True, help=".npy file of shape (N, D); row i is image i")
    parser.add_argument("--meta", type=str, required=True, help="CSV with one row per embedding row (same order)")
    parser.add_argument("--identity-column", type=str, default="identity", help="identity column of --meta")
    parser.add_argument("--group-column", type=str, default="gender", help="demographic group column of --meta (gender, race, age_bin, ...)")
    parser.add_argument("--reference-group", type=str | None, default=None,
                        help="compare every other group with this one (FR-NAS: female); default: maximum over all ordered pairs")
    parser.add_argument("--age-bins", action="store_true", help="bin a numeric group column into FR-NAS age bins (1-25, 26-50, 51-75, 76-110)")
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(list(argv))

    import csv

    import numpy as np
    import torch

    from callbacks.fairness import evaluate_fairness
    from datamodules.recognition.formats import age_bin

    emb_path, meta_path = Path(args.embeddings), Path(args.meta)
    for path in (emb_path, meta_path):
        if not path.is_file():
            raise UserError(f"file not found: {path}")
    try:
        embeddings = np.load(emb_path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{emb_path}: not a .npy array ({exc})") from None
    if embeddings.ndim != 2:
        raise UserError(f"{emb_path}: expected a (N, D) array, got shape {embeddings.shape}")
    with open(meta_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in (args.identity_column, args.group_column):
            if col not in header:
                raise UserError(f"{meta_path}: column {col!r} missing (columns: {', '.join(header)})")
        rows = list(reader)
    if len(rows) != len(embeddings):
        raise UserError(f"{meta_path} has {len(rows)} rows but {emb_path} has {len(embeddings)} embeddings")
    identities = {v: i for i, v in enumerate(sorted({r[args.identity_column] for r in rows}))}

    def group_of(row: dict) -> str | None:
        value = (row[args.group_column] or "").strip()
        if not value:
            return None
        if args.age_bins:
            try:
                return age_bin(float(value))
            except ValueError:
                raise UserError(f"{meta_path}: {args.group_column}={value!r} is not a number") from None
        return value.lower()

    labels = [group_of(r) for r in rows]
    names = sorted({g for g in labels if g is not None})
    index = {g: i for i, g in enumerate(names)}
    if args.reference_group is not None and args.reference_group.lower() not in index:
        raise UserError(f"reference group {args.reference_group!r} not in {args.group_column} values {names}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    result = evaluate_fairness(
        torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device),
        torch.tensor([identities[r[args.identity_column]] for r in rows]),
        torch.tensor([index[g] if g is not None else -1 for g in labels]),
        names, None if args.reference_group is None else args.reference_group.lower(), progress=True,
    )
    out = result.as_dict()
    if args.json:
        print(json.dumps(_json_safe(out)))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"identification over {out['probes']} probes")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key in ("error", "rank", "rank_disparity", "disparity", "ratio", "rank_ratio", "error_ratio"):
        summary.add_row(key, f"{out[key]:.4f}")
    console.print(summary)
    groups = Table(title=f"per {args.group_column}")
    for col in ("group", "n", "accuracy", "error", "rank", "rank_by_identity"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g, s in out["groups"].items():
        groups.add_row(g, str(s["n"]), f"{s['accuracy']:.4f}", f"{s['error']:.4f}", f"{s['rank']:.3f}", f"{s['rank_by_identity']:.3f}")
    console.print(groups)
    return 0


# --------------------------------------------------------------------------------------------
# data check


def _data(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: facenas data {check,synth} [options]\n\n"
              "  check   read a dataset and report every dropped or repaired box and image\n"
              "  synth   write a seeded synthetic face-detection or identity set in the real formats\n\n"
              "`facenas data <verb> --help` lists the options.")
        return 0 if argv else 2
    if argv[0] == "synth":
        return _data_synth(argv[1:])
    if argv[0] != "check":
        raise UserError(f"unknown data verb {argv[0]!r}; the data verbs are: check, synth")
    from datamodules.detection.formats import DETECTION_FORMATS
    from datamodules.recognition.formats import IDENTITY_FORMATS

    parser = _tool_parser("data check", "Read a dataset the way training reads it, decode every image, and report "
                          "each box or image that is dropped (NaN, empty, outside, unreadable) or repaired (clipped).")
    formats = ", ".join([*DETECTION_FORMATS, *IDENTITY_FORMATS])
    parser.add_argument("--format", type=str, required=True, help=f"dataset format: {formats}")
    parser.add_argument("--annotations", type=str | None, default=None,
                        help="annotation file or folder (identity formats: folders: attribute CSV, optional; celeba: "
                             "identity_CelebA.txt; vggface2: identity_meta.csv; csv: the CSV)")
    parser.add_argument("--images", type=str | None, default=None, help="image folder")
    parser.add_argument("--max-bad-fraction", type=float, default=0.01, help="exit 1 when more than this fraction of boxes and images is dropped")
    parser.add_argument("--verify", type=str, default="full", help="image check: full (decode every image), header, none")
    parser.add_argument("--list", type=int, default=20, help="how many individual issues to print")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    args = parser.parse_args(list(argv[1:]))
    if args.format not in DETECTION_FORMATS and args.format not in IDENTITY_FORMATS:
        raise UserError(f"unknown format {args.format!r}; choose from {formats}")
    if args.annotations is None and args.format != "folders":
        raise UserError(f"--annotations is required for format {args.format!r}")

    from datamodules.detection.formats import read_detection
    from datamodules.progress import counting
    from datamodules.recognition.formats import read_identities

    with counting(f"checking {args.format} images"):
        if args.format in DETECTION_FORMATS:
            samples, report = read_detection(args.format, args.annotations, args.images, verify=args.verify)
            extra = {"images": len(samples), "boxes": int(sum(len(s) for s in samples)),
                     "ignored_boxes": int(sum(s.ignore.sum() for s in samples))}
        else:
            samples, report = read_identities(args.format, args.annotations, args.images, verify=args.verify)
            extra = {"images": len(samples), "identities": len({s.identity for s in samples})}
    failed = report.bad_fraction > args.max_bad_fraction
    if args.json:
        print(json.dumps({**extra, "images_read": report.images_read, "boxes_read": report.boxes_read, "dropped": report.num_bad,
                          "bad_fraction": report.bad_fraction, "counts": dict(report.counts()), "ok": not failed,
                          "issues": [vars(i) for i in report.issues]}))
    else:
        print(report.summary())
        for issue in report.issues[: args.list]:
            print(f"  {'dropped' if issue.bad else 'repaired'} {issue.reason} at {issue.where()}: {issue.detail}")
        if len(report.issues) > args.list:
            print(f"  ... {len(report.issues) - args.list} more (--list N or --json for all)")
        print(f"kept: {', '.join(f'{v} {k}' for k, v in extra.items())}")
        verdict = "FAIL" if failed else "OK"
        print(f"{verdict}: {100 * report.bad_fraction:.2f}% dropped (limit {100 * args.max_bad_fraction:.2f}%)")
    return 1 if failed else 0


def _probe(argv: Sequence[str]) -> int:
    """Linear probes of a protected attribute on a trained identification model (FR-NAS Table 3)."""
    import numpy as np
    import torch
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class ProbeCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--ckpt", type=str, required=True, help="checkpoint of the trained model (e.g. runs/.../best-*.ckpt)")
            parser.add_argument("--attribute", type=str, default="gender", help="protected attribute to probe (a group column of the data)")
            parser.add_argument("--split", type=str, default="test", help="data split whose images are probed: train, val or test")
            parser.add_argument("--probe", type=str, default="logistic", help="logistic (logistic regression) or mlp (one hidden layer)")
            parser.add_argument("--test_fraction", type=float, default=0.3, help="share of identities held out to score the probe")
            parser.add_argument("--json", type=bool, default=False, help="print one JSON object instead of a table")

    cli = ProbeCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                   args=list(argv), save_config_callback=None,
                   parser_kwargs={"prog": "facenas probe", "exit_on_error": False,
                                  "description": "Freeze a trained identification model, extract its last two layers "
                                                 "(N-1: pooled backbone features, N: embeddings) and report how well a "
                                                 "probe predicts a protected attribute on held-out identities."})
    cfg = cli.config
    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {cfg.split!r}")
    if cfg.probe not in ("logistic", "mlp"):
        raise UserError(f"--probe must be logistic or mlp, got {cfg.probe!r}")
    model, data = cli.model, cli.datamodule
    if not hasattr(model, "features"):
        raise UserError(f"{type(model).__name__} has no features() method: probes need an identification model (FaceID)")
    if not Path(cfg.ckpt).is_file():
        raise UserError(f"checkpoint not found: {cfg.ckpt}")
    data.hparams.group_column = cfg.attribute
    data.prepare_data()
    data.setup("test")
    if not data.group_names:
        raise UserError(f"no image has a value for attribute {cfg.attribute!r}")
    state = torch.load(cfg.ckpt, map_location="cpu", weights_only=False)
    if getattr(model, "head", None) is None and state.get("hyper_parameters", {}).get("num_classes"):
        model._build_head(int(state["hyper_parameters"]["num_classes"]))
    model.load_state_dict(state["state_dict"])
    model.eval()
    loader = data._loader(cfg.split, False)  # the evaluation transform, in order (also for the train split)
    pooled, embedded, labels, identities = [], [], [], []
    from datamodules.progress import track

    with torch.no_grad():
        for batch in track(loader, "extracting features"):
            last_but_one, last = model.features(batch["images"])
            pooled.append(last_but_one.float().numpy())
            embedded.append(last.float().numpy())
            labels.append(batch["groups"].numpy())
            identities.append(batch["identities"].numpy())
    from callbacks.probes import probe_layers

    try:
        results = probe_layers({"N-1 (backbone)": np.concatenate(pooled), "N (embedding)": np.concatenate(embedded)},
                               np.concatenate(labels), np.concatenate(identities), probe=cfg.probe, test_fraction=cfg.test_fraction)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.json:
        print(json.dumps({"attribute": cfg.attribute, "groups": data.group_names, "probe": cfg.probe,
                          "layers": {r.layer: {"accuracy": r.accuracy, "majority": r.majority, "train": r.train, "test": r.test}
                                     for r in results}}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.probe} probe of {cfg.attribute} ({', '.join(data.group_names)}) on the {cfg.split} split")
    for col in ("layer", "held-out accuracy", "majority class", "train images", "held-out images"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in results:
        table.add_row(r.layer, f"{r.accuracy:.4f}", f"{r.majority:.4f}", str(r.train), str(r.test))
    Console().print(table)
    return 0


def _search(argv: Sequence[str]) -> int:
    parser = _tool_parser("search", "Search hyper-parameters and architectures: ask the backend, train each trial from the "
                          "base YAML plus the trial's overrides, read its objectives from the logged metrics, record it in the "
                          "study's SQLite store, tell the backend. Running an existing study again resumes it.")
    parser.add_argument("--name", type=str, required=True, help="study name (store and runs under runs/search/<name>)")
    parser.add_argument("--space", type=str, required=True, help="hyperfd_hpo, frnas_joint, frnas_phase1, or a ConfigSpace .json")
    parser.add_argument("--objectives", type=list[dict[str, str]], required=True,
                        help="logged metrics to optimise, e.g. [{metric: val/error, mode: min}, {metric: val/rank_disparity, mode: min}]")
    parser.add_argument("--base", type=list[str], default=[], help="training YAML(s) every trial starts from")
    parser.add_argument("--mapping", type=dict[str, str], default={},
                        help="dotted training key -> space parameter or template, e.g. {model.init_args.lr: lr, "
                             "model.init_args.backbone: 'dpn_search_small_{edge1}{edge2}{edge3}'}")
    parser.add_argument("--backend", type=str | dict, default="random",
                        help="random, smac, optuna, moasha, or {class_path: ..., init_args: {...}} (e.g. smac with facade: mf)")
    parser.add_argument("--executor", type=str | dict, default="inprocess",
                        help="inprocess, subprocess ({workers: N, gpus: [...]}) or dask ({scheduler: tcp://host:8786, workers: N})")
    parser.add_argument("--budget", type=dict[str, float] | float | None, default=None,
                        help="epochs per trial: a number, or {min: 25, max: 100, eta: 2} for multi-fidelity backends")
    parser.add_argument("--budget_key", type=str, default="trainer.max_epochs", help="the training key the budget sets")
    parser.add_argument("--n_trials", type=int, default=20, help="finished trials to reach (counting earlier runs of the study)")
    parser.add_argument("--walltime", type=float | None, default=None, help="stop starting trials after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="the backend's seed; trial i trains with seed_everything = seed + i")
    parser.add_argument("--storage", type=str | None, default=None, help="SQLite file (default runs/search/<name>/study.sqlite)")
    parser.add_argument("--runs_dir", type=str | None, default=None, help="trial folders (default runs/search/<name>)")
    parser.add_argument("--overrides", type=dict, default={}, help="dotted training keys set for every trial")
    parser.add_argument("--reference_point", type=list[float] | None, default=None, help="hypervolume reference (costs; max objectives negated)")
    parser.add_argument("--wandb", type=dict | None, default=None,
                        help="log every trial to W&B ({project: facenas, ...}; offline unless WANDB_API_KEY or WANDB_MODE=online)")
    parser.add_argument("--report", type=bool, default=True, help="write the report when the study ends")
    parser.add_argument("--resume", action="store_true", help="require an existing study and continue it")
    args = parser.parse_args(list(argv))
    from search.study import Study, StudySettings

    fields = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "__path__")}
    try:
        settings = StudySettings(**fields)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if args.resume and not settings.store_path.is_file():
        raise UserError(f"nothing to resume: {settings.store_path} does not exist")
    try:
        Study(settings).run()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


def _search_report(argv: Sequence[str]) -> int:
    parser = _tool_parser("search-report", "Report on a study: trials table, best configuration or Pareto front, hypervolume "
                          "against evaluations, PNG plots, and the best configuration(s) as training YAML.")
    parser.add_argument("study", type=str, help="the study's name, folder, or SQLite file")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default: the study's folder)")
    args = parser.parse_args(list(argv))
    from search.report import write_report
    from search.store import StudyStore

    path = Path(args.study)
    if path.is_dir():
        path = path / "study.sqlite"
    elif not path.exists():
        path = Path("runs/search") / args.study / "study.sqlite"
    if not path.is_file():
        raise UserError(f"no study found at {args.study} (looked for {path})")
    try:
        write_report(StudyStore(path), args.out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


def _data_synth(argv: Sequence[str]) -> int:
    parser = _tool_parser("data synth", "Write a seeded synthetic data set in the real formats, so that every reader, "
                          "model and quickstart runs without downloads. detection: images/ + wider_face_bbx_gt.txt + "
                          "label.txt (5 landmarks); identities: one folder per identity + labels.csv (image, identity, gender).")
    parser.add_argument("--task", type=str, default="detection", help="detection or identities")
    parser.add_argument("--out", type=str, required=True, help="output folder (reused when it already holds the same set)")
    parser.add_argument("--images", type=int, default=100, help="detection: number of images")
    parser.add_argument("--domains", type=list[str], default=["plain"],
                        help="detection: domain styles, round-robin: plain, crowd, masked, lowlight, fisheye, cartoon")
    parser.add_argument("--width", type=int, default=640, help="detection: image width")
    parser.add_argument("--height", type=int, default=480, help="detection: image height")
    parser.add_argument("--identities", type=int, default=100, help="identities: number of identities")
    parser.add_argument("--per-identity", type=int, default=10, help="identities: images per identity")
    parser.add_argument("--size", type=int, default=112, help="identities: image side")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same pixels")
    args = parser.parse_args(list(argv))
    if args.task == "detection":
        from datamodules.detection.synthetic import DOMAINS, generate_detection_dataset

        unknown = [d for d in args.domains if d not in DOMAINS]
        if unknown:
            raise UserError(f"unknown domain {unknown[0]!r}; choose from {', '.join(DOMAINS)}")
        root = generate_detection_dataset(args.out, args.images, domains=args.domains, size=(args.width, args.height), seed=args.seed)
        print(f"wrote {args.images} images to {root}/images with {root}/wider_face_bbx_gt.txt and {root}/label.txt")
    elif args.task == "identities":
        from datamodules.recognition.synthetic import generate_identity_dataset

        labels = generate_identity_dataset(args.out, args.identities, args.per_identity, size=args.size, seed=args.seed)
        print(f"wrote {args.identities} identities x {args.per_identity} images; labels in {labels}")
    else:
        raise UserError(f"unknown task {args.task!r}; choose detection or identities")
    return 0


# --------------------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facenas`` console script and ``python -m facenas``."""
    _die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"facenas {version('facenas')}")
        return 0
    verb, rest = argv[0], argv[1:]
    handlers = {"eval-detections": _eval_detections, "fairness-report": _fairness_report, "data": _data, "probe": _probe,
                "search": _search, "search-report": _search_report}
    import warnings

    from jsonargparse import ArgumentError

    from datamodules.records import DataError

    # Lightning's own use of an API newer torch deprecates: not the user's to fix
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # like `python -m`, let configs name classes of modules in the working directory
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if verb in LIGHTNING_VERBS:
            return _lightning_cli([verb, *rest])
        if verb in handlers:
            return handlers[verb](rest)
        raise UserError(f"unknown verb {verb!r}; choose from {', '.join(LIGHTNING_VERBS + TOOL_VERBS)} (facenas --help)")
    except ArgumentError as exc:
        print(f"facenas {verb}: error: {exc}\n(facenas {verb} --help lists every option)", file=sys.stderr)
        return 2
    except (UserError, DataError, FileNotFoundError) as exc:
        message = str(exc) if not isinstance(exc, FileNotFoundError) or not exc.filename else f"file not found: {exc.filename}"
        print(f"facenas {verb}: error: {message}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # models.NonFiniteLossError: a diverged training
        print(f"facenas {verb}: training stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facenas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
