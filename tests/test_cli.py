"""The `facenas` command, run as a user runs it: its grammar (groups, help, the deprecated
spellings), eval detections, eval fairness, data check, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from facenas.callbacks import evaluate_detections, evaluate_fairness
from facenas.datamodules.detection import read_wider, write_wider_predictions

from .conftest import REPO, data_path, run_facenas


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
        "export",
        "data check",
        "data synth",
        "eval detections",
        "eval fairness",
        "eval compare",
        "eval transfer",
        "search run",
        "search report",
        "hyperfd build",
        "hyperfd export",
        "hyperfd report",
        "hyperfd augment",
        "hyperfd evaluate",
        "hyperfd train",
    } == {v.words for v in VERBS}
    # the old spellings work but are not shown
    for old in ("eval-detections", "fairness-report", "fairness-compare", "evaluate-transfer", "search-report"):
        assert old not in out.stdout
    assert "benchmark" not in out.stdout
    group = run_facenas("hyperfd")
    assert group.returncode == 2
    assert "usage: facenas hyperfd {build,export,report,augment,evaluate,train}" in group.stdout
    group = run_facenas("search")
    assert group.returncode == 2 and "usage: facenas search {run,report}" in group.stdout


@pytest.mark.parametrize("group", ["eval", "data", "search", "hyperfd"])
def test_group_help_lists_its_verbs(group):
    from facenas.cli.main import VERBS

    for args, code in (([group], 2), ([group, "--help"], 0), ([group, "-h"], 0)):
        out = run_facenas(*args)
        assert out.returncode == code and out.stderr == ""
        verbs = [v.words.split()[1] for v in VERBS if v.words.startswith(f"{group} ")]
        assert f"usage: facenas {group} {{{','.join(verbs)}}}" in out.stdout
        assert all(f"  {verb} " in out.stdout for verb in verbs)


@pytest.mark.parametrize(
    "verb",
    [
        ["eval", "detections"],
        ["eval", "fairness"],
        ["data", "check"],
        ["probe"],
        ["eval", "transfer"],
        ["eval", "compare"],
    ],
)
def test_json_is_a_flag_everywhere(verb):
    out = run_facenas(*verb, "--help")
    assert out.returncode == 0
    assert "--config" in out.stdout
    assert "--json" in out.stdout and "--json JSON" not in out.stdout and "--json {true,false}" not in out.stdout


@pytest.mark.parametrize(
    "verb", [["fit"], ["search", "run"], ["search", "report"], ["data", "synth"], ["predict"], ["hyperfd", "train"]]
)
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
    out = run_facenas("eval", "detections", "--gt", str(gt), "--pred", str(tmp_path / "pred"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    want = evaluate_detections(preds, truth)
    assert result["ap50"] == pytest.approx(want.ap50, abs=1e-3)  # files keep one decimal
    assert result["num_gt"] == 5082 and result["num_images"] == 394
    assert 0.5 < result["ap50"] < 0.95 and set(result) >= {"ap50", "num_gt", "num_det", "recall"}

    # HyperFD's protocol: faces under 36 px at short side 720 are ignored; per perceived gender
    out = run_facenas(
        "eval",
        "detections",
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
    table = run_facenas("eval", "detections", "--gt", str(gt), "--pred", str(tmp_path / "pred"))
    assert table.returncode == 0 and "AP@0.5" in table.stdout and f"{result['ap50']:.4f}" in table.stdout


def test_eval_detections_takes_a_yaml_config(wider_val, tmp_path):
    gt, _ = wider_val
    samples = read_wider(gt, verify="none")[:20]
    noisy_predictions(samples, tmp_path / "pred")
    config = tmp_path / "eval.yaml"
    config.write_text(f"gt: {gt}\npred: {tmp_path / 'pred'}\nmin_size: 10\njson: true\n")
    out = run_facenas("eval", "detections", "--config", str(config))
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
        "eval",
        "fairness",
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
        "eval", "fairness", "--embeddings", str(tmp_path / "emb.npy"), "--meta", str(tmp_path / "meta.csv")
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
        json.loads(run_facenas("eval", "fairness", *args, *extra).stdout) for extra in ([], ["--singletons", "error"])
    )
    assert (skip["probes"], skip["singletons"], skip["singleton_rule"]) == (36, 2, "skip")
    assert (error["probes"], error["singletons"], error["singleton_rule"]) == (38, 2, "error")
    assert error["error"] == pytest.approx((skip["error"] * 36 + 2) / 38)


def test_fairness_report_errors_are_one_line(tmp_path):
    write_embeddings(tmp_path)
    out = run_facenas(
        "eval",
        "fairness",
        "--embeddings",
        str(tmp_path / "emb.npy"),
        "--meta",
        str(tmp_path / "meta.csv"),
        "--group_column",
        "race",
    )
    assert out.returncode == 2 and "column 'race' missing" in out.stderr and "Traceback" not in out.stderr
    out = run_facenas(
        "eval", "fairness", "--embeddings", str(tmp_path / "nope.npy"), "--meta", str(tmp_path / "meta.csv")
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
            ["eval", "detections", "--gt", "/nonexistent/gt.txt", "--pred", "/tmp"],
            "/nonexistent/gt.txt: annotation file not found",
        ),
        (["eval", "detections", "--gt", "x", "--pred", "y", "--iou", "abc"], "iou: "),
        (["eval", "detections", "--gt", "x", "--pred", "y", "--no-such-option", "1"], "no-such-option"),
        (["data", "check", "--format", "nope", "--annotations", "x"], "unknown format 'nope'"),
        (["data", "frobnicate"], "unknown data verb 'frobnicate'"),
        (["hyperfd", "bogus"], "unknown hyperfd verb 'bogus'; choose from build, export, report, augment, evaluate"),
        (["benchmark", "bogus"], "unknown hyperfd verb 'bogus'; choose from build"),
        (["eval", "bogus"], "unknown eval verb 'bogus'; choose from detections, fairness, compare, transfer"),
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


# ---------------------------------------------------------------- deprecated spellings


def notice(old: str, new: str) -> str:
    return f"facenas: {old!r} is deprecated; use {new!r}"


@pytest.mark.parametrize(
    "old, new",
    [
        (["eval-detections"], ["eval", "detections"]),
        (["fairness-report"], ["eval", "fairness"]),
        (["fairness-compare"], ["eval", "compare"]),
        (["evaluate-transfer"], ["eval", "transfer"]),
        (["search-report"], ["search", "report"]),
        (["benchmark", "build"], ["hyperfd", "build"]),
        (["benchmark", "export"], ["hyperfd", "export"]),
        (["benchmark", "report"], ["hyperfd", "report"]),
        (["benchmark", "augment"], ["hyperfd", "augment"]),
    ],
)
def test_an_old_verb_runs_the_new_one_with_one_notice(old, new):
    out = run_facenas(*old, "--help")
    assert out.returncode == 0
    assert out.stderr.splitlines() == [notice(" ".join(old), "facenas " + " ".join(new))]
    assert f"usage: facenas {' '.join(new)} " in out.stdout


def test_old_eval_detections_scores_like_the_new_spelling(wider_val, tmp_path):
    gt, images = wider_val
    noisy_predictions(read_wider(gt, images)[:30], tmp_path / "pred")
    args = ["--gt", str(gt), "--pred", str(tmp_path / "pred"), "--json"]
    new = run_facenas("eval", "detections", *args)
    old = run_facenas("eval-detections", *args)
    assert new.returncode == old.returncode == 0 and old.stdout == new.stdout
    assert old.stderr.splitlines() == [notice("eval-detections", "facenas eval detections"), *new.stderr.splitlines()]


def test_old_search_with_options_is_search_run(tmp_path):
    out = run_facenas("search", "--config", str(tmp_path / "missing.yaml"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2, out.stderr
    assert lines[0] == notice("search", "facenas search run")
    assert lines[1].startswith("facenas search run: error:") and "missing.yaml" in lines[1]


def test_old_ckpt_option_is_ckpt_path(tmp_path):
    out = run_facenas("eval", "transfer", "--ckpt", str(tmp_path / "nope.ckpt"), "--sets", "[x.bin]")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[0] == notice("--ckpt", "--ckpt_path"), out.stderr
    assert lines[1:] == [f"facenas eval transfer: error: checkpoint not found: {tmp_path / 'nope.ckpt'}"]
    # probe too (--ckpt=FILE spelling)
    out = run_facenas("probe", "--config", "configs/recognition/quickstart.yaml", f"--ckpt={tmp_path / 'nope.ckpt'}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[0] == notice("--ckpt", "--ckpt_path"), out.stderr
    assert lines[-1] == f"facenas probe: error: checkpoint not found: {tmp_path / 'nope.ckpt'}"


def lookup_csv(path) -> None:
    """An exported lookup table of one dataset and two configurations."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "space", "params", "seed", "val_ap50", "test_ap50", "status"])
        writer.writerow(["plain", "hyperfd_hpo", json.dumps({"lr": 0.001}), 0, 0.5, 0.4, "success"])
        writer.writerow(["plain", "hyperfd_hpo", json.dumps({"lr": 0.003}), 0, 0.6, 0.5, "success"])


def test_old_benchmark_option_is_table_config_and_file_errors_are_clean(tmp_path):
    lookup_csv(tmp_path / "table.csv")
    missing = tmp_path / "nope.yaml"
    out = run_facenas("hyperfd", "train", "--table", str(tmp_path / "table.csv"), "--benchmark", str(missing))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[0] == notice("--benchmark", "--table_config"), out.stderr
    (line,) = lines[1:]
    assert line.startswith("facenas hyperfd train: error:") and str(missing) in line and "Errno" not in line
    out = run_facenas("hyperfd", "train", "--table", str(tmp_path / "none.csv"), "--table_config", str(missing))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2 and str(tmp_path / "none.csv") in line and "Errno" not in line
    for verb in ("evaluate", "augment"):
        out = run_facenas("hyperfd", verb, "--help")
        assert "--table_config" in out.stdout and "--benchmark" not in out.stdout


# ---------------------------------------------------------------- help texts


def test_help_texts_say_what_the_code_does():
    from facenas.search.backends import BACKENDS
    from facenas.search.executors import EXECUTORS
    from facenas.search.spaces import SPACES

    build = " ".join(run_facenas("hyperfd", "build", "--help").stdout.split())
    assert "dotted training key -> space parameter" in build
    search = run_facenas("search", "run", "--help").stdout.replace("\n", " ")
    search = "".join(search.split())  # the help is wrapped at any space or hyphen
    for name in [*BACKENDS.names(), *EXECUTORS.names(), *SPACES.names()]:
        assert f"{name}," in search or f"{name})" in search, name


def test_lightning_verbs_have_a_short_help_and_the_full_one_behind_a_flag():
    plain = run_facenas("fit", "--help")
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) < 40
    assert "--config FILE.yaml" in plain.stdout and "--help_full" in plain.stdout
    assert "  --model.init_args." not in plain.stdout and "--trainer.max_epochs 5" in plain.stdout
    configured = run_facenas("validate", "--config", "configs/detection/quickstart.yaml", "--help")
    assert configured.returncode == 0 and len(configured.stdout.splitlines()) < 250
    assert "model: facenas.models.detection" in configured.stdout
    assert "  --model.init_args.lr  float, default 0.001" in configured.stdout
    assert "  --data.init_args.batch_size  int, default" in configured.stdout
    by_class = run_facenas("test", "--model", "facenas.models.recognition.FaceID", "--help")
    assert "model: facenas.models.recognition" in by_class.stdout and "data:" not in by_class.stdout
    full = run_facenas("fit", "--help_full")
    assert full.returncode == 0 and "--trainer.max_epochs" in full.stdout and len(full.stdout.splitlines()) > 300


# ---------------------------------------------------------------- quiet by default


def test_a_cpu_training_prints_no_banner_no_tips_and_its_metrics_once(tmp_path):
    common = [
        "--config", str(REPO / "configs/detection/quickstart.yaml"), "--data.init_args.synthetic_images", "16",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
    ]  # fmt: skip
    fit = run_facenas("fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    validate = run_facenas("validate", *common, "--ckpt_path", "last", cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr[-3000:]
    for out in (fit, validate):
        text = out.stdout + out.stderr
        assert "GPU available" not in text and "TPU available" not in text and "Tip:" not in text
    assert fit.stdout.count("test/ap50") == 1 and "final metrics" in fit.stdout
    assert validate.stdout.count("val/ap50") == 1 and "validation metrics" in validate.stdout


def test_the_accelerator_banner_stays_when_an_accelerator_is_used():
    import logging

    from facenas.cli.main import _QuietLightning

    def shown(*messages: str) -> list[str]:
        quiet = _QuietLightning()
        return [m for m in messages if quiet.filter(logging.LogRecord("x", logging.INFO, "", 0, m, None, None))]

    gpu = ("GPU available: True (cuda), used: True", "TPU available: False, using: 0 TPU cores")
    assert shown(*gpu) == list(gpu)
    assert shown("GPU available: True (cuda), used: False", "TPU available: False, using: 0 TPU cores") == []
    assert shown("\U0001f4a1 Tip: For seamless cloud uploads and versioning, try installing [litmodels]") == []
    assert shown("`Trainer.fit` stopped: `max_epochs=1` reached.") == ["`Trainer.fit` stopped: `max_epochs=1` reached."]


# ---------------------------------------------------------------- files go to the run folder


def test_hyperfd_export_writes_into_the_table_folder(tmp_path):
    from .test_benchmark import write_table

    root = tmp_path / "runs" / "hyperfd" / "t"
    write_table(root, {("plain", 0): [({"lr": 0.001}, 0.5, 0.4), ({"lr": 0.003}, 0.6, 0.5)]})
    out = run_facenas("hyperfd", "export", "runs/hyperfd/t", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2 entries written to runs/hyperfd/t/table.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the working directory
    with open(root / "table.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_hyperfd_train_writes_its_ranker_under_runs_and_prints_one_line(tmp_path):
    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "space", "params", "seed", "val_ap50", "test_ap50", "status"])
        for dataset in ("plain", "masked"):
            for i, lr in enumerate((0.0003, 0.001, 0.003)):
                writer.writerow(
                    [dataset, "hyperfd_hpo", json.dumps({"lr": lr}), 0, 0.5 + i / 10, 0.4 + i / 10, "success"]
                )
    tiny = (REPO / "configs/hyperfd/tiny.yaml").read_text().replace("base: [configs/", f"base: [{REPO}/configs/")
    (tmp_path / "tiny.yaml").write_text(tiny)
    out = run_facenas(
        "hyperfd", "train", "--table", "t.csv", "--table_config", "tiny.yaml", "--features", "label_stats",
        "--warmup_steps", "5", "--cache", "runs/features", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    path = "runs/hyperfd/rankers/t-label_stats.pt"
    assert out.stdout.splitlines() == [
        f"ranker state (hyperfd_hpo, label_stats features, 2 datasets) written to {path}"
    ]
    assert out.stderr == ""  # FACENAS_PROGRESS=0: no bars
    assert (tmp_path / path).is_file()
    assert not list(tmp_path.glob("*.pt"))


# ---------------------------------------------------------------- the reference


def test_docs_cli_md_is_the_generated_reference():
    from facenas.cli.main import DEPRECATED_VERBS, VERBS, reference_markdown

    text = reference_markdown()
    assert (REPO / "docs" / "cli.md").read_text() == text, "run: python -m facenas.cli.reference > docs/cli.md"
    for verb in VERBS:
        assert f"### `facenas {verb.words}`" in text and verb.example in text
    for old in DEPRECATED_VERBS:
        assert f"| `facenas {old}" in text
