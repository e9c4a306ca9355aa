"""Every script under benchmarks/ runs end to end at its smallest size (its numbers mean nothing
here): a moved function, a changed signature or a renamed option breaks it here, not when
someone next runs the benchmark. Scripts on real data skip when ../shared is absent."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, data_path, run_facenas, run_script

BENCHMARKS = REPO / "benchmarks"
HELPERS = {"timing.py"}  # imported by the scripts, not run


def smoke_args(script: str, tmp_path: Path) -> list[str]:
    """The smallest arguments of each script; a new script gets its line here."""
    sizes = {
        "ap_eval.py": ["--images", "20", "--dets", "40", "--repeat", "1"],
        "claims.py": ["--smoke"],
        "export_latency.py": ["--sizes", "160x128", "--threads", "1", "--runs", "2", "--warmup", "1", "--images", "1",
                              "--e2e-threads", "1", "--ort-variants"],
        "faceid.py": ["--device", "cpu", "--batch", "2", "--repeat", "1", "--identities", "10",
                      "--backbones", "dpn_search_small_301"],
        "fairness.py": ["--n", "120", "--identities", "12", "--dim", "8", "--baseline-n", "60"],
        "remap.py": ["--seed-steps", "2", "--steps", "2", "--archs", "1", "--image-size", "64", "--batch", "2",
                     "--images", "6"],
        "retinaface.py": ["--smoke", "--device", "cpu"],
        "search.py": ["--warm", "3", "--timed", "2", "--overhead-trials", "1", "--skip-dask"],
        "transfer_memory.py": ["--images", "40", "--batch_size", "8"],  # 20 pairs: 10-fold accuracy
    }  # fmt: skip
    return sizes[script]


SIMPLE = ["ap_eval.py", "claims.py", "export_latency.py", "faceid.py", "fairness.py", "remap.py", "retinaface.py",
          "search.py", "transfer_memory.py"]  # fmt: skip
# the others need a table, trained detectors, real data or many trainings: their own tests below
OWN_TEST = {
    "celeba_face_boxes.py",
    "detection_gap_bootstrap.py",
    "hyperfd_top_picks.py",
    "mitigation_compare.py",
    "replay_frnas.py",
}


def test_every_script_has_a_smoke_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - HELPERS
    assert scripts == set(SIMPLE) | OWN_TEST


def ran(script: str, *args: str, cwd: Path | None = None):
    out = run_script(BENCHMARKS / script, *args, cwd=cwd)
    assert out.returncode == 0, f"{script}\n--- stdout\n{out.stdout[-2000:]}\n--- stderr\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr
    return out


@pytest.mark.parametrize("script", SIMPLE)
def test_script_runs_at_its_smallest_size(script, tmp_path):
    out = ran(script, *smoke_args(script, tmp_path), cwd=tmp_path)
    assert "|" in out.stdout  # every script prints a Markdown table


def test_replay_frnas_on_the_published_table(tmp_path):
    table = data_path("..", "benchmarks", "frnas", "analysis_vgg_val_phase1.csv")
    out = ran("replay_frnas.py", "--table", str(table), "--seeds", "1", "--trials", "25", cwd=tmp_path)
    assert "| random |" in out.stdout and "HV after 25" in out.stdout


def test_celeba_face_boxes_on_two_images(tmp_path):
    celeba = data_path("celeba_identities")
    out = ran(
        "celeba_face_boxes.py", "--data", str(celeba), "--out", str(tmp_path / "faces.csv"), "--limit", "2",
        "--size", "160", "--batch_size", "2", cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout.startswith("2 images:")
    with open(tmp_path / "faces.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"x_1", "y_1", "width", "height"} <= set(rows[0])


def test_hyperfd_top_picks_on_a_small_table(tmp_path):
    """A planted two-dataset table over the tiny YAML's pool (no training: only the script's
    features, warm-up and ranking run)."""
    from facenas.hyperfd.table.build import TableConfig, canonical

    tiny = REPO / "configs" / "hyperfd" / "tiny.yaml"
    settings = yaml.safe_load(tiny.read_text())
    configs = TableConfig(**{**settings, "root": str(tmp_path / "table")}).configurations()
    with open(tmp_path / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "space", "configuration", "params", "seed", "val_ap50", "test_ap50", "status"])
        for d, dataset in enumerate(("plain", "masked")):
            for i, config in enumerate(configs):
                ap = 0.2 + 0.1 * ((i + d) % len(configs))
                writer.writerow(
                    [dataset, settings["space"], canonical(config), json.dumps(config), 0, ap, ap, "success"]
                )
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the YAML names its base relative to the repository
    out = ran(
        "hyperfd_top_picks.py", "--table", "table.csv", "--table_config", str(tiny), "--offline", "plain",
        "--source", "plain", "--features", "label_stats", "--seeds", "0", "--warmup_steps", "5",
        "--cache", str(tmp_path / "features"), cwd=tmp_path,
    )  # fmt: skip
    assert "| masked |" in out.stdout


def test_detection_gap_bootstrap_on_two_tiny_detectors(tmp_path):
    """A RetinaFace trained for a few steps on 8 synthetic images whose faces carry a group
    label (every other face), its log folder copied as a second detector."""
    from facenas.datamodules.detection import read_wider

    out = run_facenas(
        "data", "synth", "--out", str(tmp_path / "faces"), "--images", "8", "--width", "96", "--height", "96"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    samples = read_wider(tmp_path / "faces" / "wider_face_bbx_gt.txt", verify="none")
    with open(tmp_path / "groups.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "face_index", "group"])
        writer.writerows((s.name, k, ("a", "b")[k % 2]) for s in samples for k in range(len(s)))
    config = {
        "model": {"class_path": "facenas.models.detection.RetinaFace", "init_args": {"backbone": "mobilenet_v2_0.5"}},
        "data": {
            "class_path": "facenas.datamodules.detection.FaceDetectionDataModule",
            "init_args": {
                "format": "wider",
                "train_annotations": str(tmp_path / "faces" / "wider_face_bbx_gt.txt"),
                "train_images": str(tmp_path / "faces" / "images"),
                "val_annotations": str(tmp_path / "faces" / "wider_face_bbx_gt.txt"),
                "val_images": str(tmp_path / "faces" / "images"),
                "val_attributes": str(tmp_path / "groups.csv"),
                "image_size": 64,
                "eval_short_side": 96,
                "batch_size": 4,
                "eval_batch_size": 4,
                "num_workers": 0,
            },
        },
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 1,
            "enable_progress_bar": False,
            "callbacks": [
                {
                    "class_path": "facenas.callbacks.DetectionAP",
                    "init_args": {"min_size": 0, "short_side": None, "attributes": {"group": ["a", "b"]},
                                  "min_group_faces": 1},
                }
            ],
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "det", "version": "one"},
            },
        },
    }  # fmt: skip
    (tmp_path / "det.yaml").write_text(yaml.safe_dump(config))
    fit = run_facenas("fit", "--config", str(tmp_path / "det.yaml"), "--test_after_fit", "false", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    one = tmp_path / "runs" / "det" / "one"
    shutil.copytree(one, one.with_name("two"))
    out = ran("detection_gap_bootstrap.py", str(one), str(one.with_name("two")), "--replicates", "5", cwd=tmp_path)
    assert "paired differences" in out.stdout and "group=a" in out.stdout


@pytest.mark.slow
def test_mitigation_compare_trains_the_grid_and_compares_it(tmp_path):
    """One model, one seed, one epoch on 6 synthetic identities: the baseline and SensitiveNets
    on its checkpoint (`facenas fit` processes; the other methods' configs are tested in
    test_configs), then the comparison."""
    out = ran(
        "mitigation_compare.py", "--data", "synthetic", "--out", str(tmp_path / "cmp"), "--seeds", "0",
        "--models", "dpn_search_small_706", "--methods", "baseline", "sensitivenets", "--epochs", "1",
        "--identities", "6", cwd=tmp_path,
    )  # fmt: skip
    runs = yaml.safe_load((tmp_path / "cmp" / "runs.yaml").read_text())["runs"]
    assert [r["method"] for r in runs] == ["baseline", "sensitivenets"]
    assert any((tmp_path / "cmp" / "compare").iterdir()), out.stdout[-2000:]
