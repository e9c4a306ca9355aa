"""The `facenas` tool verbs, run as a user runs them: eval-detections, fairness-report, data
check, help, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from facenas.callbacks import evaluate_detections, evaluate_fairness
from facenas.datamodules.detection import read_wider, write_wider_predictions

from .conftest import data_path, run_facenas


def test_top_level_help_lists_every_verb():
    from facenas.cli import VERBS

    out = run_facenas("--help")
    assert out.returncode == 0
    listed = {
        line.split("  ")[1].strip() for line in out.stdout.splitlines() if line.startswith("  ") and "  " in line[2:]
    }
    assert {v.words for v in VERBS} <= listed
    assert {
        "fit",
        "validate",
        "test",
        "predict",
        "probe",
        "eval-detections",
        "fairness-report",
        "evaluate-transfer",
        "fairness-compare",
        "data check",
        "data synth",
        "search",
        "search-report",
        "benchmark build",
        "benchmark export",
        "benchmark report",
        "benchmark augment",
        "hyperfd evaluate",
        "hyperfd train",
    } == {v.words for v in VERBS}
    group = run_facenas("benchmark")
    assert group.returncode == 2 and "usage: facenas benchmark {build,export,report,augment}" in group.stdout
    group = run_facenas("hyperfd")
    assert group.returncode == 2 and "usage: facenas hyperfd {evaluate,train}" in group.stdout


@pytest.mark.parametrize(
    "verb",
    [
        ["eval-detections"],
        ["fairness-report"],
        ["data", "check"],
        ["probe"],
        ["evaluate-transfer"],
        ["fairness-compare"],
    ],
)
def test_json_is_a_flag_everywhere(verb):
    out = run_facenas(*verb, "--help")
    assert out.returncode == 0
    assert "--config" in out.stdout
    assert "--json" in out.stdout and "--json JSON" not in out.stdout and "--json {true,false}" not in out.stdout


@pytest.mark.parametrize("verb", [["fit"], ["search"], ["search-report"], ["data", "synth"], ["predict"]])
def test_every_verb_explains_its_options(verb):
    out = run_facenas(*verb, "--help")
    assert out.returncode == 0 and "usage: facenas" in out.stdout and "--config" in out.stdout


def noisy_predictions(samples, out_dir, seed=0):
    """Keep ~80% of the true faces with jitter, add false positives, write WIDER files."""
    rng = np.random.default_rng(seed)
    preds = []
    for s in samples:
        keep = rng.random(len(s)) < 0.8
        boxes = s.boxes[keep] + rng.normal(0, 1.5, (int(keep.sum()), 4))
        fp = rng.uniform(0, 800, (4, 2))
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + 30], 1)])
        scores = np.concatenate([rng.uniform(0.5, 1, int(keep.sum())), rng.uniform(0, 0.7, 4)]).round(5)
        write_wider_predictions(out_dir, s.name, boxes, scores)
        preds.append((torch.tensor(boxes.round(1)), torch.tensor(scores)))
    return preds


def test_eval_detections_on_real_wider_val(wider_val, tmp_path):
    gt, images = wider_val
    samples = read_wider(gt, images)
    preds = noisy_predictions(samples, tmp_path / "pred")
    truth = [(torch.from_numpy(s.boxes), torch.from_numpy(s.ignore)) for s in samples]
    out = run_facenas("eval-detections", "--gt", str(gt), "--pred", str(tmp_path / "pred"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    want = evaluate_detections(preds, truth)
    assert result["ap50"] == pytest.approx(want.ap50, abs=1e-3)  # files keep one decimal
    assert result["num_gt"] == 5082 and result["num_images"] == 394
    assert 0.5 < result["ap50"] < 0.95 and set(result) >= {"ap50", "num_gt", "num_det", "recall"}

    # HyperFD's protocol: faces under 36 px at short side 720 are ignored; per perceived gender
    out = run_facenas(
        "eval-detections",
        "--gt",
        str(gt),
        "--pred",
        str(tmp_path / "pred"),
        "--images",
        str(images),
        "--short_side",
        "720",
        "--min_size",
        "36",
        "--json",
        "--attributes",
        str(data_path("widerface", "demographics_val.csv")),
        "--attribute_columns",
        "[perceived_gender]",
    )
    assert out.returncode == 0, out.stderr
    hyperfd = json.loads(out.stdout)
    assert hyperfd["num_gt"] < result["num_gt"]
    genders = hyperfd["attributes"]["perceived_gender"]
    assert {"female", "male"} <= set(genders)
    assert all(0 < g["ap50"] <= 1 for g in genders.values())
    assert sum(g["num_gt"] for g in genders.values()) <= hyperfd["num_gt"]

    # a table for humans
    table = run_facenas("eval-detections", "--gt", str(gt), "--pred", str(tmp_path / "pred"))
    assert table.returncode == 0 and "AP@0.5" in table.stdout and f"{result['ap50']:.4f}" in table.stdout


def test_eval_detections_takes_a_yaml_config(wider_val, tmp_path):
    gt, _ = wider_val
    samples = read_wider(gt, verify="none")[:20]
    noisy_predictions(samples, tmp_path / "pred")
    config = tmp_path / "eval.yaml"
    config.write_text(f"gt: {gt}\npred: {tmp_path / 'pred'}\nmin_size: 10\njson: true\n")
    out = run_facenas("eval-detections", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["min_size"] == 10
    assert "374 of 394 images have no prediction file" in out.stderr


def write_embeddings(tmp_path, n_ids=40, per=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per)
    gender = np.where(ids % 3 == 0, "Female", "Male")
    noise = np.where(ids % 3 == 0, 1.2, 0.7)[:, None]
    emb = rng.normal(size=(n_ids, 32))[ids] + noise * rng.normal(size=(len(ids), 32))
    np.save(tmp_path / "emb.npy", emb.astype(np.float32))
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "identity", "gender"])
        w.writerows([(f"{i}.jpg", f"id{k}", g) for i, (k, g) in enumerate(zip(ids, gender))])
    return emb, ids, gender


def test_fairness_report(tmp_path):
    emb, ids, gender = write_embeddings(tmp_path)
    out = run_facenas(
        "fairness-report",
        "--embeddings",
        str(tmp_path / "emb.npy"),
        "--meta",
        str(tmp_path / "meta.csv"),
        "--group_column",
        "gender",
        "--reference_group",
        "female",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = evaluate_fairness(
        torch.tensor(emb), torch.tensor(ids), torch.tensor((gender == "Male").astype(int)), ["female", "male"], "female"
    )
    for key in (
        "probes",
        "error",
        "disparity",
        "ratio",
        "rank_disparity",
        "rank_ratio",
        "rank_disparity_id",
        "rank_ratio_id",
        "error_ratio",
    ):
        assert got[key] == pytest.approx(getattr(want, key), rel=1e-5)
    assert (got["singletons"], got["singleton_rule"]) == (0, "skip")
    assert got["rank_disparity_id"] <= got["rank_disparity"]  # identities closer <= images closer
    assert set(got["groups"]) == {"female", "male"}
    assert set(got["groups"]["female"]) == {"accuracy", "error", "rank", "rank_by_identity", "n"}
    assert got["groups"]["female"]["error"] > got["groups"]["male"]["error"]  # noisier group, more errors
    table = run_facenas(
        "fairness-report", "--embeddings", str(tmp_path / "emb.npy"), "--meta", str(tmp_path / "meta.csv")
    )
    assert table.returncode == 0 and "rank_disparity" in table.stdout and "female" in table.stdout
    assert "rank_disparity_id" in table.stdout and "singletons skipped" in table.stdout


def test_fairness_report_counts_singletons_as_errors_on_request(tmp_path):
    emb, ids, gender = write_embeddings(tmp_path, n_ids=12, per=3)
    with open(tmp_path / "meta.csv", "a", newline="") as f:  # two more identities of one image each
        csv.writer(f).writerows([("s0.jpg", "single0", "Female"), ("s1.jpg", "single1", "Male")])
    np.save(tmp_path / "emb.npy", np.r_[emb, np.random.default_rng(1).normal(size=(2, 32))].astype(np.float32))
    args = ["--embeddings", str(tmp_path / "emb.npy"), "--meta", str(tmp_path / "meta.csv"), "--json"]
    skip, error = (
        json.loads(run_facenas("fairness-report", *args, *extra).stdout) for extra in ([], ["--singletons", "error"])
    )
    assert (skip["probes"], skip["singletons"], skip["singleton_rule"]) == (36, 2, "skip")
    assert (error["probes"], error["singletons"], error["singleton_rule"]) == (38, 2, "error")
    assert error["error"] == pytest.approx((skip["error"] * 36 + 2) / 38)


def test_fairness_report_errors_are_one_line(tmp_path):
    write_embeddings(tmp_path)
    out = run_facenas(
        "fairness-report",
        "--embeddings",
        str(tmp_path / "emb.npy"),
        "--meta",
        str(tmp_path / "meta.csv"),
        "--group_column",
        "race",
    )
    assert out.returncode == 2 and "column 'race' missing" in out.stderr and "Traceback" not in out.stderr
    out = run_facenas(
        "fairness-report", "--embeddings", str(tmp_path / "nope.npy"), "--meta", str(tmp_path / "meta.csv")
    )
    assert out.returncode == 2 and "nope.npy" in out.stderr and "Traceback" not in out.stderr


def test_data_check_on_real_wider(wider_val):
    gt, images = wider_val
    out = run_facenas("data", "check", "--format", "wider", "--annotations", str(gt), "--images", str(images))
    assert out.returncode == 0, out.stderr
    assert "394 images, 5289 boxes read; 2 dropped" in out.stdout
    assert "wider_face_val_bbx_gt.txt:332" in out.stdout and "OK" in out.stdout


def test_data_check_fails_above_the_bad_fraction(tmp_path):
    from PIL import Image

    Image.new("RGB", (50, 50)).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    gt = tmp_path / "gt.txt"
    gt.write_text("a.jpg\n2\n1 1 10 10 0 0 0 0 0 0\n5 5 -3 4 0 0 0 0 0 0\nb.jpg\n1\n1 1 5 5 0 0 0 0 0 0\n")
    out = run_facenas(
        "data", "check", "--format", "wider", "--annotations", str(gt), "--images", str(tmp_path), "--json"
    )
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["counts"] == {"empty_box": 1, "unreadable_image": 1} and not report["ok"]
    assert {i["line"] for i in report["issues"]} == {4, 5}  # the box line; the image's name line
    lenient = run_facenas(
        "data",
        "check",
        "--format",
        "wider",
        "--annotations",
        str(gt),
        "--images",
        str(tmp_path),
        "--max_bad_fraction",
        "0.5",
    )
    assert lenient.returncode == 0 and "empty_box" in lenient.stdout


def test_data_check_identity_folders():
    out = run_facenas("data", "check", "--format", "folders", "--images", str(data_path("dlib_johns")), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["identities"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["eval-detections", "--gt", "/nonexistent/gt.txt", "--pred", "/tmp"],
            "/nonexistent/gt.txt: annotation file not found",
        ),
        (["eval-detections", "--gt", "x", "--pred", "y", "--iou", "abc"], "iou: "),
        (["eval-detections", "--gt", "x", "--pred", "y", "--no-such-option", "1"], "no-such-option"),
        (["data", "check", "--format", "nope", "--annotations", "x"], "unknown format 'nope'"),
        (["data", "frobnicate"], "unknown data verb 'frobnicate'"),
        (["frobnicate"], "unknown verb 'frobnicate'"),
    ],
)
def test_user_errors_exit_2_with_one_message(args, message):
    out = run_facenas(*args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_data_synth_writes_sets_the_readers_accept(tmp_path):
    out = run_facenas(
        "data",
        "synth",
        "--out",
        str(tmp_path / "det"),
        "--images",
        "4",
        "--domains",
        "[crowd,masked]",
        "--width",
        "160",
        "--height",
        "120",
    )
    assert out.returncode == 0, out.stderr
    check = run_facenas(
        "data",
        "check",
        "--format",
        "retinaface",
        "--annotations",
        str(tmp_path / "det/label.txt"),
        "--images",
        str(tmp_path / "det/images"),
        "--json",
    )
    assert check.returncode == 0 and json.loads(check.stdout)["images"] == 4
    out = run_facenas(
        "data",
        "synth",
        "--task",
        "identities",
        "--out",
        str(tmp_path / "ids"),
        "--identities",
        "4",
        "--per_identity",
        "2",
        "--size",
        "48",
    )
    assert out.returncode == 0, out.stderr
    check = run_facenas("data", "check", "--format", "csv", "--annotations", str(tmp_path / "ids/labels.csv"), "--json")
    assert json.loads(check.stdout)["identities"] == 4
    bad = run_facenas("data", "synth", "--out", str(tmp_path / "x"), "--domains", "[underwater]")
    assert bad.returncode == 2 and "unknown domain 'underwater'" in bad.stderr
