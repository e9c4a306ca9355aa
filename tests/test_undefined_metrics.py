"""An undefined metric is never reported as 0.0: detection AP of a group without a counted face,
an AP gap with fewer than two measured groups, fairness metrics with one group or no probe,
rows without a group, and search objectives that are NaN. Each is NaN in logs, null in JSON and
"n/a" in tables, with one line saying why; a search fails the trial."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from facenas.callbacks.detection_ap import average_precision, evaluate_detections, undefined_groups
from facenas.callbacks.fairness import evaluate_fairness
from facenas.callbacks.metrics import ap_disparity
from facenas.search.backends import create_searcher
from facenas.search.spaces import load_space
from facenas.search.trial import Objective, Result, Status, outcome

from .conftest import REPO, run_facenas

BOX = "0 0 0 0 0 0"  # WIDER's six attribute flags, all 0

# ------------------------------------------------------------------------------- detection AP


def test_ap_without_a_counted_face_is_nan_not_zero():
    ap, recall = average_precision(torch.tensor([0.9]), torch.tensor([False]), 0)
    assert math.isnan(ap) and math.isnan(recall)
    boxes = torch.tensor([[10.0, 10, 40, 40], [60, 60, 90, 90]])
    result = evaluate_detections(
        [(boxes, torch.tensor([0.9, 0.8]))],
        [(boxes, torch.tensor([False, False]))],
        attributes=[{"gender": ["female", None]}],
        groups=[("gender", "female"), ("gender", "male")],
    )
    assert result.groups["gender=female"].ap50 == 1.0
    assert math.isnan(result.groups["gender=male"].ap50) and undefined_groups(result) == ["gender=male"]
    male = result.as_dict()["attributes"]["gender"]["male"]
    assert male["ap50"] is None and male["recall"] is None and male["num_gt"] == 0


def test_ap_gap_needs_two_measured_groups():
    assert math.isnan(ap_disparity([(0.8, 50), (math.nan, 0)], min_group_faces=0))
    assert math.isnan(ap_disparity([(0.8, 50), (0.2, 5)], min_group_faces=20))
    assert ap_disparity([(0.8, 50), (0.5, 30), (math.nan, 0)], min_group_faces=0) == pytest.approx(0.3)


def test_eval_detections_shows_a_group_without_faces_as_null_and_n_a(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"0--a/x.jpg\n2\n10 10 40 40 {BOX}\n60 60 10 10 {BOX}\n")
    (tmp_path / "pred/0--a").mkdir(parents=True)
    (tmp_path / "pred/0--a/x.txt").write_text("x\n1\n10 10 40 40 0.9\n")
    attributes = tmp_path / "attributes.csv"
    attributes.write_text("file,face_index,gender\n0--a/x.jpg,0,female\n0--a/x.jpg,1,male\n")
    # the only male face is 10 px: ignored with --min_size 20, so no male face is counted
    args = ("eval", "detections", "--gt", str(gt), "--pred", str(tmp_path / "pred"), "--attributes", str(attributes))
    out = run_facenas(*args, "--min_size", "20", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["attributes"]["gender"]["female"]["ap50"] == 1.0
    assert result["attributes"]["gender"]["male"]["ap50"] is None
    assert "no counted face has gender=male: its AP is undefined (null" in out.stderr
    table = run_facenas(*args, "--min_size", "20")
    assert table.returncode == 0, table.stderr[-3000:]
    male_row = next(line for line in table.stdout.splitlines() if "gender=male" in line)
    assert "n/a" in male_row and "0.0000" not in male_row
    assert "gender=male: its AP is undefined (n/a" in table.stderr


def test_fit_logs_nan_for_a_group_without_faces_and_warns_once(tmp_path):
    config = {
        "model": {"class_path": "facenas.demos.toy.ToyFaceModule"},
        "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 16, "batch_size": 4}},
        "trainer": {
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "callbacks": [
                {
                    "class_path": "facenas.callbacks.DetectionAP",
                    "init_args": {
                        "min_size": 0,
                        "short_side": None,
                        "attributes": {"gender": ["female", "nobody"]},
                        "min_group_faces": 1,
                    },
                }
            ],
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy"},
            },
        },
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_facenas("fit", "--config", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in csv.DictReader(open(tmp_path / "runs/toy/version_0/metrics.csv")) if r.get("val/ap50")]
    assert len(rows) == 2
    for row in rows:
        assert math.isnan(float(row["val/ap50_gender_nobody"]))
        assert 0.0 <= float(row["val/ap50_gender_female"]) <= 1.0
        assert math.isnan(float(row["val/ap50_disparity_gender"]))  # one measured group: no gap
    warning = "val/ap50_gender_nobody is NaN: no counted val face has gender=nobody"
    assert (out.stderr + out.stdout).count(warning) == 1, out.stderr[-3000:]


# ----------------------------------------------------------------------- identification fairness


def test_fairness_metrics_with_one_group_or_no_probe_are_nan():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(8, 4, generator=g)
    ids = torch.arange(8) // 2
    one = evaluate_fairness(emb, ids, torch.zeros(8, dtype=torch.long), ["female"])
    assert one.probes == 8 and math.isfinite(one.error)
    for key in ("disparity", "ratio", "rank_disparity", "rank_ratio", "rank_disparity_id", "rank_ratio_id"):
        assert math.isnan(getattr(one, key)), key
    assert one.undefined == ["1 group among the probes (female): the fairness metrics compare two and are undefined"]
    none = evaluate_fairness(emb, torch.arange(8), torch.zeros(8, dtype=torch.long), ["female"])
    assert none.probes == 0 and none.all_undefined and math.isnan(none.error) and math.isnan(none.disparity)
    assert "no probe (every identity has a single image)" in none.undefined[0]


def _fairness_files(tmp_path: Path, rows: list[tuple], header: str = "identity,gender") -> tuple[Path, Path]:
    emb = tmp_path / "e.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(len(rows), 4)).astype(np.float32))
    meta = tmp_path / "meta.csv"
    meta.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return emb, meta


def _fairness(emb: Path, meta: Path, *args: str):
    return run_facenas("eval", "fairness", "--embeddings", str(emb), "--meta", str(meta), "--device", "cpu", *args)


def test_eval_fairness_with_one_group_prints_null_and_n_a_and_says_why(tmp_path):
    emb, meta = _fairness_files(tmp_path, [(i // 2, "female") for i in range(8)])
    out = _fairness(emb, meta, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["disparity"] is None and result["rank_disparity_id"] is None and result["error"] is not None
    lines = [line for line in out.stderr.splitlines() if "group" in line]
    assert lines == [
        "facenas eval fairness: 1 group among the probes (female): the fairness metrics compare two and are "
        "undefined (null)"
    ]
    table = _fairness(emb, meta)
    assert table.returncode == 0, table.stderr[-3000:]
    disparity_row = next(line for line in table.stdout.splitlines() if " disparity " in line)
    assert "n/a" in disparity_row and "0.0000" not in disparity_row


@pytest.mark.parametrize(
    "rows, why",
    [
        ([(i, "female" if i % 2 else "male") for i in range(6)], "no probe (every identity has a single image)"),
        ([], "no probe (no image)"),
    ],
    ids=["one-image-per-identity", "empty-csv"],
)
def test_eval_fairness_with_nothing_defined_exits_2_in_one_line(tmp_path, rows, why):
    emb, meta = _fairness_files(tmp_path, rows)
    if not rows:
        np.save(emb, np.zeros((0, 4), dtype=np.float32))
    out = _fairness(emb, meta, "--json")
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0] and str(meta) in lines[0], out.stderr


def test_eval_fairness_counts_rows_without_a_group_and_ages_out_of_range(tmp_path):
    rows = [(i // 2, "" if i < 3 else ("female" if i % 2 else "male")) for i in range(8)]
    emb, meta = _fairness_files(tmp_path, rows)
    out = _fairness(emb, meta, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "facenas eval fairness: 3 rows without a gender: counted overall, in no group" in out.stderr
    result = json.loads(out.stdout)
    assert result["probes"] == 8 and result["ungrouped"] == 3 and sum(g["n"] for g in result["groups"].values()) == 5
    ages = [200, -5, "nan", 30, 30, 60, 20, 80]
    emb, meta = _fairness_files(tmp_path, [(i // 2, a) for i, a in enumerate(ages)], header="identity,age")
    out = _fairness(emb, meta, "--group_column", "age", "--age_bins", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 age values in no age bin (1-25, 26-50, 51-75, 76-110), e.g. 200, -5, nan" in out.stderr
    assert json.loads(out.stdout)["ungrouped"] == 3


def _compare_run(folder: Path, method: str, error: str, disparity: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "hparams.yaml").write_text(yaml.safe_dump({"backbone": "m", "mitigation": method}))
    with (folder / "metrics.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", "step", "test/error", "test/disparity"])
        out.writerow([1, 20, error, disparity])
    return folder


def test_eval_compare_shows_an_undefined_metric_as_n_a_and_exits_2_when_all_are(tmp_path):
    a = _compare_run(tmp_path / "a", "baseline", "0.2", "nan")
    b = _compare_run(tmp_path / "b", "other", "0.3", "0.1")
    out = run_facenas("eval", "compare", "--runs", f"[{a}, {b}]", "--metrics", "[disparity]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(0.200; n/a)" in out.stdout and "nan" not in out.stdout
    assert "disparity is undefined for m/baseline" in out.stderr
    out = run_facenas("eval", "compare", "--runs", f"[{a}, {b}]", "--metrics", "[disparity]", "--json")
    assert json.loads(out.stdout)["entries"][0]["disparity"] is None
    c = _compare_run(tmp_path / "c", "baseline", "nan", "nan")
    out = run_facenas("eval", "compare", "--runs", f"[{c}]", "--metrics", "[disparity]", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "undefined" in out.stderr and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------- searches


def test_a_nan_objective_fails_the_trial_even_where_infinity_is_allowed():
    objective = Objective("val/ratio", allow_nonfinite=True)
    status, reason = outcome({"val/ratio": math.nan}, [objective])
    assert status == Status.FAILED and "undefined objective(s), logged as NaN: val/ratio" in reason
    assert outcome({"val/ratio": math.inf}, [objective]) == (Status.SUCCESS, None)
    status, reason = outcome({}, [objective])
    assert status == Status.FAILED and "never logged: val/ratio" in reason


def test_backends_never_receive_nan_as_a_cost():
    space = load_space("frnas_joint", seed=0)
    objectives = [Objective("err")]
    status, reason = outcome({"err": math.nan}, objectives)
    failed = Result(status, {"err": math.nan}, error=reason)
    smac = create_searcher({"class_path": "smac", "init_args": {"facade": "hpo"}})
    smac.setup(space, objectives, None, 0, 10)
    smac.tell(smac.ask(), failed)
    from smac.runhistory.enumerations import StatusType

    (value,) = smac.smac.runhistory.values()
    assert value.status == StatusType.CRASHED and not math.isnan(value.cost)
    optuna_searcher = create_searcher("optuna")
    optuna_searcher.setup(space, objectives, None, 0, 10)
    optuna_searcher.tell(optuna_searcher.ask(), failed)
    assert optuna_searcher.study.trials[0].state.name == "FAIL" and optuna_searcher.study.trials[0].values is None


def test_search_run_fails_trials_whose_objective_is_undefined(tmp_path):
    from facenas.search.store import StudyStore

    base = {
        "model": {"class_path": "facenas.demos.toy.ToyFaceModule"},
        "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 8, "batch_size": 4}},
        "trainer": {
            "accelerator": "cpu",
            "enable_checkpointing": False,
            "callbacks": [
                {
                    "class_path": "facenas.callbacks.DetectionAP",
                    "init_args": {"min_size": 0, "short_side": None, "attributes": {"gender": ["nobody"]}},
                }
            ],
        },
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    from ConfigSpace import ConfigurationSpace, Float

    space = ConfigurationSpace(name="toy", seed=0)
    space.add([Float("lr", (1e-4, 1e-2), log=True)])
    space.to_json(tmp_path / "space.json")
    settings = {
        "name": "undefined",
        "space": str(tmp_path / "space.json"),
        "base": [str(tmp_path / "base.yaml")],
        "mapping": {"model.init_args.lr": "lr"},
        "objectives": [{"metric": "val/ap50_gender_nobody", "mode": "max", "allow_nonfinite": True}],
        "backend": "random",
        "n_trials": 2,
        "budget": 1,
        "storage": str(tmp_path / "study.sqlite"),
        "runs_dir": str(tmp_path / "runs"),
        "report": False,
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(settings))
    out = run_facenas("search", "run", "--config", str(tmp_path / "search.yaml"), cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == 0 and "trial 0 failed" in out.stdout and "undefined" in out.stdout, out.stdout[-3000:]
    rows = StudyStore(tmp_path / "study.sqlite", "undefined").trials()
    assert [r.status for r in rows] == [Status.FAILED, Status.FAILED]
    for row in rows:
        assert "undefined objective(s), logged as NaN: val/ap50_gender_nobody" in row.result.error
        assert not row.result.values or math.isnan(row.result.values["val/ap50_gender_nobody"])


# ----------------------------------------------------------------------- a NaN attribute flag


def test_a_nan_attribute_flag_is_kept_as_an_ignore_region_not_dropped(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"0--a/x.jpg\n2\n10 10 20 20 nan 0 0 0 0 0\n50 50 20 20 {BOX}\n")
    out = run_facenas(
        "data", "check", "--format", "wider", "--annotations", str(gt), "--verify", "none", "--json",
        "--max_bad_fraction", "0",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    assert found["boxes"] == 2 and found["ignored_boxes"] == 1 and found["counts"] == {"bad_attribute": 1}
    assert "kept as an ignore region" in found["issues"][0]["detail"]
    assert found["dropped"] == 0 and found["bad_fraction"] == 0.0 and found["ok"]


def test_fairness_callback_logs_nan_with_one_group_and_warns_once_per_stage():
    import lightning.pytorch as pl

    from facenas.callbacks import FairnessMetrics

    g = torch.Generator().manual_seed(0)
    emb, ids, groups = torch.randn(16, 4, generator=g), torch.arange(16) // 2, torch.zeros(16, dtype=torch.long)

    class Embeddings(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def validation_step(self, batch, batch_idx):
            e, i, grp = batch
            return {"embeddings": e, "identities": i, "groups": grp}

    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(emb, ids, groups), batch_size=8)
    callback = FairnessMetrics(group_names=["female"])
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], accelerator="cpu"
    )
    with pytest.warns(UserWarning, match="val/disparity and the other fairness metrics are NaN: fewer than two groups"):
        trainer.validate(Embeddings(), dataloaders=batches, verbose=False)
    logged = trainer.callback_metrics
    assert math.isnan(logged["val/disparity"].item()) and math.isnan(logged["val/rank_disparity_id"].item())
    assert math.isfinite(logged["val/error"].item())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(Embeddings(), dataloaders=batches, verbose=False)
    assert not [w for w in caught if "fairness metrics are NaN" in str(w.message)]  # once per stage


def test_wider_subset_without_an_attribute_file_logs_nan_per_gender_not_zero(tmp_path):
    from .conftest import data_path

    data_path("widerface")
    configs = REPO / "configs"
    out = run_facenas(
        "fit", "--config", str(configs / "detection/retinaface_mnv2.yaml"),
        "--config", str(configs / "detection/wider_subset.yaml"), "--config", str(configs / "trainer/cpu.yaml"),
        "--data.init_args.val_attributes", "null", "--data.init_args.image_size", "256",
        "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
        "--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "true", "--test_after_fit", "false",
        cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for group in ("female", "male"):
        assert f"val/ap50_perceived_gender_{group} is NaN: no counted val face has perceived_gender={group}" in text
        row = next(line for line in out.stdout.splitlines() if f"val/ap50_perceived_gender_{group}" in line)
        assert "nan" in row.lower() and "0.0" not in row, row


def test_a_nan_is_never_the_best_value_of_a_trial(tmp_path):
    from facenas.search.runner import read_metrics

    best = Objective("val/ap50_gender_male", mode="max", reduce="best")
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,val/ap50_gender_male\n0,nan\n1,0.5\n2,nan\n")
    values, _ = read_metrics(metrics, [best])
    assert values == {"val/ap50_gender_male": 0.5} and outcome(values, [best]) == (Status.SUCCESS, None)
    metrics.write_text("epoch,val/ap50_gender_male\n0,nan\n1,nan\n")
    values, _ = read_metrics(metrics, [best])
    assert outcome(values, [best])[0] == Status.FAILED


def test_eval_fairness_with_a_reference_group_without_probes_is_undefined_not_another_pair(tmp_path):
    # female has only singletons (no probe); male and other have probes
    rows = [(f"f{i}", "female") for i in range(3)] + [(i // 2, "male" if i < 4 else "other") for i in range(8)]
    emb, meta = _fairness_files(tmp_path, rows)
    out = _fairness(emb, meta, "--reference_group", "female", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["disparity"] is None and result["error"] is not None
    assert "the reference group 'female' has no probe" in out.stderr


class _Scripted(LightningModule):
    """Logs ``val/x`` from a script, one value per validation."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - 1) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/x", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("values, best_epoch", [([math.nan] * 3, None), ([math.nan, 0.5, math.nan], 1)])
def test_the_best_checkpoint_is_never_an_undefined_value(tmp_path, values, best_epoch):
    from facenas.training.cli import DefinedBestCheckpoint

    best = DefinedBestCheckpoint(
        monitor="val/x", mode="max", dirpath=tmp_path, filename="best-{epoch:03d}", auto_insert_metric_name=False
    )
    loader = torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)
    Trainer(
        max_epochs=len(values), callbacks=[best], logger=False, enable_progress_bar=False, enable_model_summary=False
    ).fit(_Scripted(values), loader, loader)
    files = sorted(p.name for p in tmp_path.glob("best-*.ckpt"))
    if best_epoch is None:
        assert best.best_model_path == "" and files == []
    else:
        assert files == [f"best-{best_epoch:03d}.ckpt"] and best.best_model_score == 0.5
    # the same state key as Lightning's own, so checkpoints written before still resume it
    assert best.state_key == ModelCheckpoint(monitor="val/x", mode="max").state_key
