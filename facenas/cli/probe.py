"""``facenas probe``: linear probes of a protected attribute on a trained identification model
(FR-NAS Table 3), built through the same LightningCLI configuration as ``facenas fit``."""

from __future__ import annotations

from typing import Literal

from facenas.core.errors import UserError

from .common import print_json, table


def _arguments(parser) -> None:
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        default=None,
        help="checkpoint of the trained model (e.g. runs/.../best-*.ckpt); required",
    )
    parser.add_argument(
        "--attribute",
        type=str | None,
        default=None,
        help="protected attribute to probe: a group column of the data (default: the data's group_column)",
    )
    parser.add_argument(
        "--split", type=Literal["train", "val", "test"], default="test", help="data split whose images are probed"
    )
    parser.add_argument(
        "--probe",
        type=Literal["logistic", "mlp"],
        default="logistic",
        help="logistic (logistic regression) or mlp (one hidden layer)",
    )
    parser.add_argument(
        "--test_fraction", type=float, default=0.3, help="share of identities held out to score the probe"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


SUMMARY = (
    "Freeze a trained identification model, extract its last two layers (N-1: pooled backbone features, "
    "N: embeddings) and report how well a probe predicts a protected attribute on held-out identities."
)


def run(verb: str, argv: list[str]) -> int:
    from pathlib import Path

    from .train import config_cli

    cli = config_cli(verb, argv, SUMMARY, _arguments)
    if cli is None:
        return 0

    from facenas.callbacks.probes import extract_layers, probe_layers
    from facenas.training.cli import check_checkpoint

    cfg = cli.config
    if not callable(getattr(cli.model, "features", None)):
        raise UserError(
            f"{type(cli.model).__name__} has no features() method: probes need an identification model (FaceID)"
        )
    if cfg.ckpt_path is None:
        raise UserError("give --ckpt_path: the checkpoint of the trained model")
    if not Path(cfg.ckpt_path).is_file():
        raise UserError(f"checkpoint not found: {cfg.ckpt_path}")
    check_checkpoint(cfg.ckpt_path)
    data = cli.datamodule
    attribute = cfg.attribute or data.hparams.group_column
    if attribute != data.hparams.group_column:  # the same data, grouped by the probed attribute
        data = type(data)(**{**data.hparams, "group_column": attribute})
    data.prepare_data()
    data.setup("test")
    if not data.group_names:
        raise UserError(f"no image has a value for attribute {attribute!r}")
    model = type(cli.model).load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=False).eval()
    features, labels, identities = extract_layers(model, data.eval_dataloader(cfg.split))
    try:
        results = probe_layers(features, labels, identities, probe=cfg.probe, test_fraction=cfg.test_fraction)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.json:
        print_json(
            {
                "attribute": attribute,
                "groups": data.group_names,
                "probe": cfg.probe,
                "split": cfg.split,
                "layers": {
                    r.layer: {"accuracy": r.accuracy, "majority": r.majority, "train": r.train, "test": r.test}
                    for r in results
                },
            }
        )
        return 0
    table(
        f"{cfg.probe} probe of {attribute} ({', '.join(data.group_names)}) on the {cfg.split} split",
        ("layer", "held-out accuracy", "majority class", "train images", "held-out images"),
        [(r.layer, f"{r.accuracy:.4f}", f"{r.majority:.4f}", r.train, r.test) for r in results],
    )
    return 0
