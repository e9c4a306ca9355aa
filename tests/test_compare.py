"""`facenas eval compare`: (error; metric) per model x method over seeds, Pareto marks,
Markdown / CSV / PNG, on run folders the tests write and on a real training's log folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from facenas.callbacks.compare import compare, markdown, read_runs
from facenas.core.errors import UserError

from .conftest import REPO, run_facenas

# (model, method) -> per seed (test/error, test/rank_disparity_id)
RUNS = {
    ("dpn", "baseline"): [(0.30, 2.0), (0.32, 2.2)],
    ("dpn", "flipped"): [(0.35, 1.0), (0.37, 1.2)],
    ("dpn", "angular"): [(0.40, 2.5), (0.42, 2.7)],  # dominated by the baseline
    ("resnet", "baseline"): [(0.25, 3.0), (0.25, 3.0)],
}


def write_run(folder, model, method, error, rank_disparity, extra_rows=True):
    folder.mkdir(parents=True)
    hparams = {"backbone": model, "mitigation": None if method == "baseline" else method}
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    with (folder / "metrics.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", "step", "val/error", "test/error", "test/rank_disparity_id", "test/disparity"])
        if extra_rows:
            out.writerow([0, 10, 0.9, "", "", ""])
        out.writerow([1, 20, "", error, rank_disparity, 0.1])


@pytest.fixture
def run_folders(tmp_path):
    folders = []
    for (model, method), seeds in RUNS.items():
        for seed, (error, rd) in enumerate(seeds):
            folder = tmp_path / f"{model}_{method}_{seed}"
            write_run(folder, model, method, error, rd)
            folders.append(folder)
    return folders


def test_compare_means_pareto_and_markdown(run_folders):
    result = compare(read_runs(run_folders), metrics=["rank_disparity_id"])
    entries = {(e["model"], e["method"]): e for e in result["entries"]}
    base = entries[("dpn", "baseline")]
    assert base["runs"] == 2 and base["error"] == pytest.approx(0.31)
    assert base["error_std"] == pytest.approx(np.std([0.30, 0.32], ddof=1))
    assert base["rank_disparity_id"] == pytest.approx(2.1)
    optimal = {(e["model"], e["method"]) for e, m in zip(result["entries"], result["pareto"]["rank_disparity_id"]) if m}
    assert optimal == {("dpn", "baseline"), ("dpn", "flipped"), ("resnet", "baseline")}
    text = markdown(result)
    assert "| model | baseline | flipped | angular |" in text
    assert "**(0.310 ± 0.014; 2.100 ± 0.141)**" in text  # Pareto-optimal: bold
    assert "| (0.410 ± 0.014; 2.600 ± 0.141) |" in text  # dominated: plain
    assert "| resnet | **(0.250 ± 0.000; 3.000 ± 0.000)** |  |  |" in text  # no flipped / angular runs


def test_markdown_says_the_runs_per_cell_when_they_differ(run_folders):
    text = markdown(compare(read_runs(run_folders[:-1]), metrics=["rank_disparity_id"]))  # resnet: 1 of 2 seeds
    assert "| resnet | **(0.250; 3.000)** n=1 |  |  |" in text
    assert "**(0.310 ± 0.014; 2.100 ± 0.141)** n=2" in text


def test_fairness_compare_command_with_a_runs_yaml(run_folders, tmp_path):
    listing = tmp_path / "runs.yaml"
    entries = [
        {"dir": f.name, "model": f.name.split("_")[0].upper(), "method": f.name.split("_")[1]} for f in run_folders
    ]
    listing.write_text(yaml.safe_dump({"runs": entries}))
    out = run_facenas("eval", "compare", "--runs", f"[{listing}]", "--out", "cmp", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert {e["model"] for e in result["entries"]} == {"DPN", "RESNET"}  # names from the YAML
    assert set(result["metrics"]) >= {"rank_disparity_id", "rank_disparity", "disparity", "error_ratio"}
    rows = list(csv.DictReader((tmp_path / "cmp/comparison.csv").open()))
    assert len(rows) == 4 * len(result["metrics"])
    assert all(int(r["pareto"]) == 0 for r in rows if r["metric"] == "rank_disparity")  # not logged: NaN, never optimal
    assert (tmp_path / "cmp/rank_disparity_id.png").stat().st_size > 0
    assert (tmp_path / "cmp/comparison.md").read_text().startswith("**(Error; rank_disparity_id)**")


def test_bad_runs_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.csv"):
        read_runs([tmp_path / "empty"])
    (tmp_path / "val_only").mkdir()
    (tmp_path / "val_only/metrics.csv").write_text("epoch,step,val/error\n0,10,0.5\n")
    with pytest.raises(UserError, match="no test/error logged"):
        read_runs([tmp_path / "val_only"])
    assert read_runs([tmp_path / "val_only"], stage="val")[0].values == {"error": 0.5}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"runs": [{"model": "x"}]}))
    out = run_facenas("eval", "compare", "--runs", f"[{tmp_path / 'bad.yaml'}]", cwd=tmp_path)
    assert out.returncode == 2 and "runs[0] needs a 'dir'" in out.stderr


def test_fairness_compare_on_a_real_training(tmp_path):
    """A real `facenas fit` of the identification quickstart (tiny) with the CSV logger and its
    test after fit: the comparison reads its folder, model and method."""
    out = run_facenas(
        "fit", "--config", str(REPO / "configs/recognition/quickstart.yaml"),
        "--config", str(REPO / "configs/recognition/mitigation/angular.yaml"),
        "--data.init_args.synthetic_identities", "8", "--data.init_args.num_workers", "0",
        "--data.init_args.synthetic_root", "ids", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.logger.init_args.save_dir", "logs",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (folder,) = (tmp_path / "logs").glob("*/version_0")
    out = run_facenas("eval", "compare", "--runs", f"[{folder}]", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (entry,) = json.loads(out.stdout)["entries"]
    assert entry["model"] == "dpn_search_small_301" and entry["method"] == "angular" and entry["runs"] == 1
    assert 0.0 <= entry["error"] <= 1.0 and np.isfinite(entry["rank_disparity_id"])
