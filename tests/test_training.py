"""Training plumbing through `facenas fit/test`: configs, checkpoints and resume, errors, the
W&B logger offline, and a real 2-process CPU DDP run whose metrics are synchronised."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from facenas.callbacks import evaluate_detections, evaluate_fairness
from facenas.callbacks.verification import pair_set_accuracy
from facenas.datamodules.recognition.formats import read_verification_bin, write_verification_bin
from facenas.demos.toy import GROUPS, ToyFaceModule, toy_sample

from .conftest import REPO, run_facenas

TOY = {
    "model": {"class_path": "facenas.demos.toy.ToyFaceModule"},
    "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 32, "batch_size": 4}},
    "trainer": {
        "max_epochs": 2,
        "enable_progress_bar": False,
        "callbacks": [
            {
                "class_path": "facenas.callbacks.DetectionAP",
                "init_args": {"min_size": 0, "short_side": None, "attributes": {"gender": list(GROUPS)}},
            },
            {"class_path": "facenas.callbacks.FairnessMetrics", "init_args": {"reference_group": "female"}},
        ],
    },
}


def write_config(tmp_path: Path, **overrides) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TOY))
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy"},
    }
    for key, value in overrides.items():
        config["trainer"][key] = value
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def last_metrics(metrics_csv: Path) -> dict[str, float]:
    rows = list(csv.DictReader(open(metrics_csv)))
    out: dict[str, float] = {}
    for row in rows:
        out.update({k: float(v) for k, v in row.items() if v != ""})
    return out


def full_set_metrics(items):
    det = evaluate_detections(
        [(i["det_boxes"], i["det_scores"]) for i in items], [(i["boxes"], i["ignore"]) for i in items]
    )
    fair = evaluate_fairness(
        torch.stack([i["embedding"] for i in items]),
        torch.tensor([i["identity"] for i in items]),
        torch.tensor([i["group"] for i in items]),
        list(GROUPS),
        "female",
    )
    return det, fair


def test_fit_saves_config_best_and_last_then_resumes_and_tests(tmp_path):
    config = write_config(tmp_path)
    out = run_facenas("fit", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "toy" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "facenas.demos.toy.ToyFaceModule" and saved["trainer"]["max_epochs"] == 2
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(p.startswith("best-") for p in checkpoints)
    metrics = last_metrics(run / "metrics.csv")
    det, fair = full_set_metrics([toy_sample(i) for i in range(32)])
    assert metrics["val/ap50"] == pytest.approx(det.ap50, rel=1e-5)
    assert metrics["val/rank_disparity"] == pytest.approx(fair.rank_disparity, rel=1e-5)
    assert "val/ap50" in out.stdout  # the final metrics table

    # validating every 2nd epoch, the third epoch does not validate: last.ckpt is still written
    resumed = run_facenas(
        "fit",
        "--config",
        str(config),
        "--ckpt_path",
        "last",
        "--trainer.max_epochs",
        "3",
        "--trainer.check_val_every_n_epoch",
        "2",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "using last checkpoint" in resumed.stderr and str(run / "checkpoints" / "last.ckpt") in resumed.stderr
    state = torch.load(tmp_path / "runs/toy/version_1/checkpoints/last.ckpt", weights_only=False)
    assert state["epoch"] == 2  # continued from epoch 2 of 3 instead of starting over, and saved it

    tested = run_facenas("test", "--config", str(config), "--ckpt_path", "best", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/ap50" in tested.stdout and "test/rank_disparity" in tested.stdout


def test_print_config_resolves_every_default(tmp_path):
    out = run_facenas("fit", "--config", str(write_config(tmp_path)), "--print_config")
    assert out.returncode == 0
    printed = yaml.safe_load(out.stdout)
    assert printed["data"]["init_args"]["num_val"] == 32 and printed["model"]["init_args"]["lr"] == 0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer.max_epochz", "3"], "max_epochz"),
        (["--model.lr", "abc"], "model.init_args.lr: Expected a <class 'float'>. Got value: abc"),
        (["--model", "facenas.demos.toy.NoSuchModel"], "NoSuchModel"),
    ],
)
def test_config_errors_exit_2_with_one_message(tmp_path, args, message):
    out = run_facenas("fit", "--config", str(write_config(tmp_path)), *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_data_errors_while_training_end_in_one_message(tmp_path):
    out = run_facenas(
        "fit", "--config", str(write_config(tmp_path)), "--data.annotations", "/nonexistent/gt.txt", cwd=tmp_path
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == "facenas fit: error: /nonexistent/gt.txt: annotation file not found"
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "config, args, message",
    [
        (
            "detection/quickstart.yaml",
            ["--model.init_args.optimizer", "rmsprop"],
            "model.init_args.optimizer: Expected a typing.Literal['sgd', 'adam', 'adamw']. Got value: rmsprop",
        ),
        (
            "detection/quickstart.yaml",
            ["--model.init_args.backbone", "no_such_net"],
            "model.init_args.backbone: unknown backbone 'no_such_net'",
        ),
        (
            "detection/quickstart.yaml",
            ["--data.init_args.min_crop_ratio", "1.5"],
            "data.init_args.min_crop_ratio: min_crop_ratio must be in (0, 1], got 1.5",
        ),
        (
            "recognition/quickstart.yaml",
            ["--model.init_args.head", "no_such_head"],
            "model.init_args.head: unknown head 'no_such_head'; choose from cosface, arcface, magface",
        ),
        (
            "detection/retinaface_mnv2.yaml",
            ["--data.init_args.format", "wider"],
            "data.init_args.format: format 'wider' needs train_annotations",
        ),
    ],
)
def test_shipped_config_mistakes_exit_2_before_any_data_is_made(tmp_path, config, args, message):
    out = run_facenas("fit", "--config", str(REPO / "configs" / config), *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == f"facenas fit: error: {message}" or (
        message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    ), out.stderr
    assert not (tmp_path / "data").exists()  # nothing was generated or split before the error


def test_retinaface_takes_adamw():
    from facenas.models.detection import RetinaFace

    model = RetinaFace(optimizer="adamw", lr=1e-3)
    assert type(model.configure_optimizers()["optimizer"]).__name__ == "AdamW"


def test_diverged_training_exits_1_with_one_line(tmp_path):
    config = write_config(tmp_path, max_epochs=1)
    out = run_facenas(
        "fit",
        "--config",
        str(config),
        "--model",
        "facenas.demos.toy.ToySearchModule",
        "--model.diverge",
        "true",
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert (
        "facenas fit: training stopped: non-finite training loss at epoch 0" in out.stderr
        and "Traceback" not in out.stderr
    )


def test_runs_without_a_logger_get_their_config_name(tmp_path):
    config = yaml.safe_load(write_config(tmp_path).read_text())
    del config["trainer"]["logger"]
    path = tmp_path / "my_detector.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_facenas("fit", "--config", str(path), "--trainer.max_epochs", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "runs/my_detector/version_0/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "runs/default").exists()


def test_missing_config_file_exits_2(tmp_path):
    out = run_facenas("fit", "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "nope.yaml" in out.stderr and "Traceback" not in out.stderr


def test_wandb_logger_runs_offline_and_finishes_one_run(tmp_path):
    config = write_config(tmp_path, max_epochs=1)
    out = run_facenas(
        "fit",
        "--config",
        str(config),
        "--config",
        str(REPO / "configs/logger/wandb.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "wb"),
        cwd=tmp_path,
        env={"WANDB_MODE": "", "WANDB_DIR": str(tmp_path / "wb")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (record,) = runs[0].glob("*.wandb")
    # the logged metrics are in the offline run; wandb's service process writes the file and may
    # still be flushing it for a moment after the training process has exited on a loaded machine
    deadline = time.monotonic() + 60
    while b"val/ap50" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"val/ap50" in record.read_bytes()
    assert "finishing run" in (runs[0] / "logs" / "debug.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_cpu_ddp_synchronises_metrics(tmp_path):
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(40):  # 20 pairs of noise images: matching pairs share their brightness
        image = rng.integers(0, 60, (24, 24, 3)) + 4 * (i // 2 if i % 4 < 2 else i)
        buf = io.BytesIO()
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    pair_set = write_verification_bin(tmp_path / "pairs.bin", blobs, [True, False] * 10)
    config = write_config(tmp_path, max_epochs=1, accelerator="cpu", devices=2, strategy="ddp")
    extra = {
        "class_path": "facenas.callbacks.VerificationAccuracy",
        "init_args": {"sets": {"pairs": str(pair_set)}, "image_size": 24},
    }
    written = yaml.safe_load(config.read_text())
    written["trainer"]["callbacks"].append(extra)
    config.write_text(yaml.safe_dump(written))
    # a process of its own: Lightning's DDP launcher starts the other rank from this command line
    out = run_facenas("fit", "--config", str(config), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, process=True)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = last_metrics(tmp_path / "runs/toy/version_0/metrics.csv")
    items = [toy_sample(i) for i in range(32)]
    det, fair = full_set_metrics(items)
    # logged values cover both ranks' halves (DistributedSampler: rank r gets items r, r+2, ...)
    assert metrics["val/ap50"] == pytest.approx(det.ap50, rel=1e-5)
    assert metrics["val/probes"] == fair.probes == 32
    assert metrics["val/error"] == pytest.approx(fair.error, rel=1e-5)
    assert metrics["val/rank_disparity"] == pytest.approx(fair.rank_disparity, rel=1e-5)
    assert metrics["val/n_female"] + metrics["val/n_male"] == 32
    # verification: rank 0 alone reads and embeds the pairs; every rank logs its accuracy
    pairs = read_verification_bin(pair_set)
    want, _ = pair_set_accuracy(ToyFaceModule().embed, pairs, image_size=24)
    assert metrics["val/pairs_accuracy"] == pytest.approx(want) and 0.5 < want <= 1.0
    # and differ from what either rank alone would have logged
    for rank in (0, 1):
        half_det, half_fair = full_set_metrics(items[rank::2])
        assert half_det.ap50 != pytest.approx(det.ap50, rel=1e-3)
        assert half_fair.probes < 32
