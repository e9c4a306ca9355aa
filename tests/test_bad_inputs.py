"""Bad values and files end in one line on stderr naming the culprit, exit code 2, and nothing
written where the command refuses: training options, search settings, fractions, images that
do not decode, empty configs, broken space files, and study stores that are damaged or were
written by an older version."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_facenas
from tests.test_bad_detection_input import BOX, write_truncated_jpeg
from tests.test_search import toy_base, toy_space

QUICKSTART = str(REPO / "configs/detection/quickstart.yaml")


def one_line(out, *needles: str) -> str:
    """The single stderr line of a refused command (exit code 2), holding every needle."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ---------------------------------------------------------------- training options


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--trainer.max_epochs", "-5", "trainer.max_epochs: must be an integer >= 0, or -1 for no limit, got -5"),
        ("--trainer.min_epochs", "-1", "trainer.min_epochs"),
        ("--trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches"),
        ("--trainer.limit_val_batches", "-0.5", "trainer.limit_val_batches"),
        ("--trainer.max_time", "soon", "trainer.max_time"),  # refused by Lightning's Trainer, named here
        ("--model.init_args.lr", "-1", "model.init_args.lr: lr must be > 0, got -1.0"),
        ("--model.init_args.weight_decay", "-0.1", "model.init_args.weight_decay"),
        ("--data.init_args.max_bad_fraction", "1.5", "data.init_args.max_bad_fraction"),
    ],
)
def test_fit_refuses_a_bad_value_before_anything_is_written(tmp_path, option, value, needle):
    out = run_facenas(
        "fit", "--config", QUICKSTART, option, value, "--data.init_args.synthetic_images", "4", cwd=tmp_path
    )
    one_line(out, "facenas fit: error:", needle)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("content", ["", "\n\n", "# nothing but a comment\n"])
def test_an_empty_config_file_is_named(tmp_path, content):
    empty = tmp_path / "empty.yaml"
    empty.write_text(content)
    for verb in (["fit"], ["search", "run"], ["data", "check"]):
        out = run_facenas(*verb, "--config", str(empty), cwd=tmp_path)
        one_line(out, f"config file {empty} is empty")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {class_path: x\n")
    one_line(run_facenas("fit", "--config", str(broken), cwd=tmp_path), f"config file {broken} is not valid YAML")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "empty.yaml"]


# ---------------------------------------------------------------- fractions


@pytest.mark.parametrize(
    "args",
    [
        ["data", "check", "--format", "wider", "--annotations", "gt.txt", "--max_bad_fraction", "-1"],
        ["eval", "fairness", "--embeddings", "e.npy", "--meta", "m.csv", "--max_bad_fraction", "2"],
        ["fairness-report", "--embeddings", "e.npy", "--meta", "m.csv", "--max_bad_fraction", "1.01"],
    ],
)
def test_max_bad_fraction_is_a_fraction(tmp_path, args):
    out = run_facenas(*args, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "max_bad_fraction" in lines[-1] and "v>=0 and v<=1" in lines[-1], out.stderr
    assert len([line for line in lines if "deprecated" not in line]) == 1
    assert list(tmp_path.iterdir()) == []


def test_images_that_do_not_decode_count_against_max_bad_fraction(tmp_path):
    """Every image has a readable header but no pixels: the default header check passes them,
    and training stops at the first batch instead of reporting an AP of 0."""
    train, val = tmp_path / "train", tmp_path / "val"
    face = f"20 20 40 40 {BOX}\n"
    for folder in (train, val):
        for k in range(6):
            write_truncated_jpeg(folder / f"0--a/{k}.jpg")
    for name in ("train_gt.txt", "val_gt.txt"):
        (tmp_path / name).write_text("".join(f"0--a/{k}.jpg\n1\n{face}" for k in range(6)))
    out = run_facenas(
        "fit",
        "--config", QUICKSTART,
        "--data.init_args.format", "wider",
        "--data.init_args.train_annotations", str(tmp_path / "train_gt.txt"),
        "--data.init_args.train_images", str(train),
        "--data.init_args.val_annotations", str(tmp_path / "val_gt.txt"),
        "--data.init_args.val_images", str(val),
        "--data.init_args.image_size", "64",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
        "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("facenas fit: error:") and "images do not decode" in last, last
    assert "(limit 5.0%)" in last and "--verify full" in last
    assert not list(tmp_path.glob("runs/*/version_*/metrics.csv")) or "val/ap50" not in "".join(
        p.read_text() for p in tmp_path.glob("runs/*/version_*/metrics.csv")
    )


# ---------------------------------------------------------------- search settings


def search_yaml(tmp_path: Path, **values) -> Path:
    """A search YAML over the toy model; ``values`` replace or add keys."""
    config = {
        "name": "toy",
        "space": toy_space(tmp_path),
        "base": [toy_base(tmp_path)],
        "mapping": {"model.init_args.x": "x", "model.init_args.y": "y"},
        "objectives": [{"metric": "val/score", "mode": "min"}],
        "n_trials": 2,
        "budget": 1,
        "storage": str(tmp_path / "out/study.sqlite"),
        "runs_dir": str(tmp_path / "out"),
    }
    config.update(values)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "values, extra, needle",
    [
        ({"n_trials": -1}, [], "n_trials: Not of type PositiveInt"),
        ({"n_trials": 0}, [], "n_trials: Not of type PositiveInt"),
        ({}, ["--walltime", "-1"], "walltime: Not of type PositiveFloat"),
        ({"budget": {"min": 8, "max": 2}}, [], "budget: max 2 is below min 8"),
        ({"budget": {"min": 1, "max": 8, "eta": 1}}, [], "budget: eta must be above 1"),
        ({"budget": 0}, [], "budget: a trial needs at least 1 epoch (it trains round(budget) epochs), got 0"),
        ({"budget": {"min": 0, "max": 4}}, [], "budget: a trial needs at least 1 epoch"),
        (
            {"budget": None, "overrides": {"trainer.max_epochs": 0}},
            [],
            "trainer.max_epochs is 0 in the study's training config: a trial would train nothing",
        ),
    ],
)
def test_search_run_refuses_bad_settings_before_anything_is_written(tmp_path, values, extra, needle):
    out = run_facenas("search", "run", "--config", str(search_yaml(tmp_path, **values)), *extra, cwd=tmp_path)
    one_line(out, "facenas search run: error:", needle)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_corrupt_space_file_is_named(tmp_path):
    space = tmp_path / "space.json"
    space.write_text('{"hyperparameters": [')
    out = run_facenas("search", "run", "--config", str(search_yaml(tmp_path, space=str(space))), cwd=tmp_path)
    one_line(out, f"search space file {space} is not a valid ConfigSpace JSON")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- study stores

_OLD_TRIALS = """
CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE trials (
    id INTEGER PRIMARY KEY, config TEXT NOT NULL, budget REAL, seed INTEGER NOT NULL, status TEXT NOT NULL,
    objectives TEXT, intermediate TEXT, error TEXT, run_dir TEXT, started REAL NOT NULL, finished REAL,
    duration REAL
);
"""  # the layout before the backend_seed column


def old_store(tmp_path: Path, rows: list[tuple[str, str, str]] | None = None) -> Path:
    """A study store in the layout written before the ``backend_seed`` column: the toy study's
    settings and its trials as (config JSON, status, objectives JSON)."""
    from facenas.search.study import StudySettings

    settings = StudySettings(
        name="old",
        space=toy_space(tmp_path),
        base=[toy_base(tmp_path)],
        mapping={"model.init_args.x": "x", "model.init_args.y": "y"},
        objectives=[{"metric": "val/score", "mode": "min"}],
        budget=2,
        runs_dir=str(tmp_path / "old"),
    )
    rows = rows or [
        ('{"x": 0.25, "y": 0.5}', "success", '{"val/score": 0.75}'),
        ('{"x": 0.75, "y": 0.125}', "success", '{"val/score": 0.5}'),
    ]
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_TRIALS)
        conn.execute("INSERT INTO study VALUES ('settings', ?)", (json.dumps(settings.as_dict()),))
        conn.execute("INSERT INTO study VALUES ('backend_name', '\"random\"')")
        for i, (config, status, objectives) in enumerate(rows):
            conn.execute(
                "INSERT INTO trials (id, config, budget, seed, status, objectives, intermediate, started, finished, "
                "duration) VALUES (?, ?, 2, ?, ?, ?, '[]', 0, 1, 1)",
                (i, config, i, status, objectives),
            )
    conn.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_reads_a_store_written_before_backend_seed_without_changing_it(tmp_path):
    store = old_store(tmp_path)
    before = digest(store)
    out = run_facenas("search", "report", str(store), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    assert summary["best"][0]["id"] == 1 and summary["trials"] == 2
    assert digest(store) == before  # read-only: no column added
    assert sorted(p.name for p in tmp_path.glob("old.sqlite*")) == ["old.sqlite"]  # no -wal / -shm


def test_report_leaves_no_side_files_next_to_a_store_in_wal_mode(tmp_path):
    from facenas.search.store import StudyStore

    store = old_store(tmp_path)
    StudyStore(store).close()  # a study opens it: WAL mode and the backend_seed column
    assert sorted(p.name for p in tmp_path.glob("old.sqlite*")) == ["old.sqlite"]
    before = digest(store)
    out = run_facenas("search", "report", str(store), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("old.sqlite*")) == ["old.sqlite"] and digest(store) == before


@pytest.mark.parametrize(
    "row, needle",
    [
        (('{"x": 0.25, "y": 0.5}', "success", '{"val/score": 0.7'), "its objectives is not JSON"),
        (('{"x": 0.25,', "success", '{"val/score": 0.75}'), "its config is not JSON"),
        (('{"x": 0.25, "y": 0.5}', "finished", '{"val/score": 0.75}'), "unknown status 'finished'"),
    ],
)
def test_report_names_the_store_and_the_trial_it_cannot_read_and_creates_nothing(tmp_path, row, needle):
    store = old_store(tmp_path, [('{"x": 0.75, "y": 0.125}', "success", '{"val/score": 0.5}'), row])
    before = digest(store)
    out = run_facenas("search", "report", str(store), "--out", str(tmp_path / "report"), cwd=tmp_path)
    one_line(out, "facenas search report: error:", f"{store}: trial 1 cannot be read", needle)
    assert not (tmp_path / "report").exists() and not (tmp_path / "old").exists()
    assert sorted(p.name for p in tmp_path.glob("old.sqlite*")) == ["old.sqlite"] and digest(store) == before


def test_config_checks_leave_inline_yaml_to_the_parser():
    from facenas.core.errors import config_file_error

    inline = "model:\n  init_args:\n    lr: 0.1\n" * 40  # longer than a file name may be
    assert config_file_error(inline) is None and config_file_error("{trainer: {max_epochs: 1}}") is None
