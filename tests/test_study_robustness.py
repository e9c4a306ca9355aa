"""A study obeys its scheduler: resume never repeats a configuration (every backend) and an
exhausted space ends the study; a mapping onto nothing is refused before any trial; a damaged
store is one line; SIGTERM / SIGINT stop a study (in-process, subprocess and Dask trials) and a
`facenas fit` cleanly, and nothing is lost, repeated or recorded as failed; a corrupt
checkpoint is one line."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from ConfigSpace import Categorical, ConfigurationSpace, Float
from rich.console import Console

from facenas.search.backends import Searcher
from facenas.search.spaces import config_key
from facenas.search.store import StoreError, StudyStore
from facenas.search.study import Study, StudySettings
from facenas.search.trial import Objective, Proposal, Result, Status, Trial

from .conftest import REPO, run_facenas
from .test_search import toy_base as search_toy_base
from .test_search import toy_space

# ----------------------------------------------------------------------------- resume and exhaustion

BACKENDS = [
    "random",
    {"class_path": "smac", "init_args": {"facade": "hpo", "n_initial": 3}},
    {"class_path": "smac", "init_args": {"facade": "mf"}},
    {"class_path": "smac", "init_args": {"facade": "hyperband"}},
    {"class_path": "smac", "init_args": {"facade": "random"}},
    {"class_path": "optuna", "init_args": {"sampler": "tpe", "n_startup_trials": 5}},
    {"class_path": "optuna", "init_args": {"sampler": "nsga2", "population_size": 4}},
    {"class_path": "optuna", "init_args": {"sampler": "motpe"}},
    {"class_path": "optuna", "init_args": {"sampler": "random"}},
    {"class_path": "moasha", "init_args": {"eta": 2}},
]


def small_space(path: Path) -> str:
    """4 x 3 = 12 configurations: collisions are likely, exhaustion is quick."""
    cs = ConfigurationSpace(name="small", seed=0)
    cs.add([Categorical("a", ["0", "1", "2", "3"]), Categorical("b", ["x", "y", "z"])])
    cs.to_json(path)
    return str(path)


def small_objective(trial: Trial) -> Result:
    c = trial.config
    err = int(c["a"]) + 0.1 * "xyz".index(c["b"]) + 1.0 / (trial.budget or 1.0)
    return Result(Status.SUCCESS, {"err": err, "rd": (int(c["a"]) - 2) ** 2 + 0.1 * "zyx".index(c["b"])})


def multi_fidelity(spec) -> bool:
    return isinstance(spec, dict) and (
        spec["class_path"] == "moasha" or spec["init_args"].get("facade") in ("mf", "hyperband")
    )


def small_settings(tmp_path: Path, spec, n_trials: int) -> StudySettings:
    sampler = spec["init_args"].get("sampler") if isinstance(spec, dict) else None
    return StudySettings(
        name="small",
        space=small_space(tmp_path / "space.json"),
        objectives=[Objective("err"), Objective("rd")][: 2 if sampler in ("nsga2", "motpe") else 1],
        backend=spec,
        budget={"min": 1, "max": 4, "eta": 2} if multi_fidelity(spec) else None,
        n_trials=n_trials,
        seed=0,
        storage=str(tmp_path / "study.sqlite"),
        runs_dir=str(tmp_path),
        report=False,
    )


@pytest.mark.parametrize("spec", BACKENDS, ids=lambda s: json.dumps(s, sort_keys=True))
def test_resume_never_repeats_a_configuration_and_an_exhausted_space_ends_the_study(tmp_path, spec):
    """Resumed in steps (2, 4, 6, 8 trials: each a fresh backend told the stored trials), no
    backend proposes a (configuration, budget) the store already holds; asked for more trials
    than the space has, the study ends cleanly with a message instead of repeating or raising."""
    for n_trials in (2, 4, 6, 8):
        rows = Study(small_settings(tmp_path, spec, n_trials), objective=small_objective, quiet=True).run().trials()
        assert len(rows) == n_trials and [r.trial.id for r in rows] == list(range(n_trials))
        keys = [(config_key(r.trial.config), r.trial.budget) for r in rows]
        assert len(set(keys)) == len(keys), f"repeated after a resume: {keys}"
    out = io.StringIO()
    study = Study(
        small_settings(tmp_path, spec, 60),
        objective=small_objective,
        console=Console(file=out, width=200),
    )
    rows = study.run().trials()
    keys = [(config_key(r.trial.config), r.trial.budget) for r in rows]
    assert len(set(keys)) == len(keys) and all(r.status == Status.SUCCESS for r in rows)
    assert study.exhausted is not None and study.exhausted in out.getvalue()
    assert "the study ends with" in out.getvalue()
    if not multi_fidelity(spec):
        assert len(rows) == 12  # every configuration once
    else:
        assert len(rows) < 60 and len({k for k, budget in keys if budget == 4.0}) <= 12
    again = Study(small_settings(tmp_path, spec, 60), objective=small_objective, quiet=True).run().trials()
    assert len({(config_key(r.trial.config), r.trial.budget) for r in again}) == len(again)
    if not multi_fidelity(spec):
        assert len(again) == 12  # resuming an exhausted study adds nothing


class Stubborn(Searcher):
    """A backend that proposes ``xs`` in turn, then the last of them for ever; every instance is
    kept in :attr:`made` so that a test can read what the study asked and told it."""

    made: list[Stubborn] = []

    def __init__(self, xs: list[float]) -> None:
        self.xs = list(xs)
        self.told: list[tuple[dict, Result]] = []
        self.asked = 0
        Stubborn.made.append(self)

    def ask(self) -> Proposal:
        self.asked += 1
        return Proposal({"x": self.xs[min(self.asked, len(self.xs)) - 1]})

    def tell(self, trial: Trial, result: Result) -> None:
        self.told.append((dict(trial.config), result))


def test_a_repeated_proposal_is_answered_from_the_store(tmp_path):
    """The study's guard: a backend that insists on a stored configuration is told its stored
    result and asked again; after MAX_REPEATS repeats in a row the space counts as exhausted."""
    import facenas.search.study as study_module

    cs = ConfigurationSpace(name="line", seed=0)
    cs.add([Float("x", (0.0, 1.0))])
    cs.to_json(tmp_path / "line.json")

    def settings(n_trials: int) -> StudySettings:
        return StudySettings(
            name="g",
            space=str(tmp_path / "line.json"),
            objectives=[Objective("err")],
            backend={"class_path": f"{__name__}.Stubborn", "init_args": {"xs": [0.25, 0.5]}},
            n_trials=n_trials,
            storage=str(tmp_path / "study.sqlite"),
            runs_dir=str(tmp_path),
            report=False,
        )

    def objective(trial: Trial) -> Result:
        return Result(Status.SUCCESS, {"err": trial.config["x"]})

    Stubborn.made.clear()
    first = Study(settings(1), objective=objective, quiet=True).run().trials()
    assert [(r.trial.config, r.result.values) for r in first] == [({"x": 0.25}, {"err": 0.25})]
    # resumed: 0.25 again (answered from the store), then 0.5 (run), then 0.5 for ever
    study = Study(settings(5), objective=objective, quiet=True)
    rows = study.run().trials()
    searcher = Stubborn.made[-1]
    assert [(r.trial.id, r.trial.config, r.result.values) for r in rows] == [
        (0, {"x": 0.25}, {"err": 0.25}),
        (1, {"x": 0.5}, {"err": 0.5}),
    ]
    told = [(config, result.values) for config, result in searcher.told]
    # the stored trial on resume, the repeat answered from the store, the trial that ran
    assert told[:3] == [({"x": 0.25}, {"err": 0.25}), ({"x": 0.25}, {"err": 0.25}), ({"x": 0.5}, {"err": 0.5})]
    assert told[3:] == [({"x": 0.5}, {"err": 0.5})] * study_module.MAX_REPEATS  # each repeat, its stored result
    assert searcher.asked == 2 + study_module.MAX_REPEATS
    assert study.exhausted is not None and "already ran" in study.exhausted


# ----------------------------------------------------------------------------- toy training studies


def toy_base(tmp_path: Path, checkpoints: bool = False, **module_args) -> str:
    return search_toy_base(tmp_path, checkpoints, batch_size=2, **module_args)


def search_yaml(tmp_path: Path, sleep: float = 0.15, **extra) -> Path:
    settings = {
        "name": "toy",
        "space": toy_space(tmp_path),
        "base": [toy_base(tmp_path, sleep=sleep)],
        "mapping": {"model.init_args.x": "x", "model.init_args.y": "y"},
        "objectives": [{"metric": "val/score", "mode": "min"}],
        "backend": {"class_path": "optuna", "init_args": {"sampler": "tpe"}},
        "n_trials": 4,
        "budget": 4,
        "runs_dir": str(tmp_path / "runs"),
        "report": False,
    }
    settings.update(extra)
    path = tmp_path / "facenas.search.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


# ----------------------------------------------------------------------------- mapping validation


def test_a_mapping_onto_nothing_is_refused_before_any_trial(tmp_path):
    """A mapping whose parameter is not in the space, or whose key the training config does not
    take, used to be dropped (the trial trained with the default, the reports showed the
    sampled value): now one line, exit code 2, and nothing runs."""
    wrong_parameter = search_yaml(tmp_path, mapping={"model.init_args.x": "x", "model.init_args.y": "z"})
    out = run_facenas("search", "run", "--config", str(wrong_parameter))
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert "model.init_args.y" in line and "'z' is not a parameter of space 'toy'" in line
    assert not (tmp_path / "runs").exists()  # no store, no trial
    wrong_key = search_yaml(tmp_path, mapping={"model.init_args.x": "x", "model.init_args.yy": "y"})
    out = run_facenas("search", "run", "--config", str(wrong_key))
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert "mapping key model.init_args.yy" in line and "ToySearchModule takes no argument 'yy'" in line
    assert "did you mean 'y'" in line and not (tmp_path / "runs").exists()


def check(tmp_path: Path, **extra) -> None:
    settings = yaml.safe_load(search_yaml(tmp_path).read_text())
    settings.update(extra)
    Study(StudySettings(**settings), quiet=True).check()


def test_mapping_keys_are_checked_against_the_base_and_the_class_signature(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    # keys the base YAML leaves at the class default are checked against the signature, not refused
    check(tmp_path, mapping={"model.init_args.x": "x", "model.init_args.burn": "y"})
    check(tmp_path, mapping={"model.x": "x", "model.y": "y"})  # jsonargparse's shorthand
    check(tmp_path, mapping={"model.init_args.x": "x", "trainer.gradient_clip_val": "y"})  # Trainer's signature
    check(tmp_path, mapping={"model.init_args.x": "x", "data.init_args.seed": "y"})
    check(tmp_path, mapping={"model.init_args.x": "x", "model.init_args.y": "y"}, budget_key="trainer.max_steps")
    for mapping, budget_key, message in [
        ({"model.init_args.x": "x", "modle.init_args.y": "y"}, None, "'modle' is not a section"),
        ({"model.init_args.x": "x", "data.init_args.nums": "y"}, None, "ToyFaceData takes no argument 'nums'"),
        ({"model.init_args.x": "x", "trainer.max_epochs.y": "y"}, None, "trainer.max_epochs is a value"),
        ({"model.init_args.x": "x", "model.init_args.y": "{y}_{w}"}, None, "'w' is not a parameter"),
        ({"model.init_args.x": "x", "model.init_args.y": "y"}, "trainer.max_epoch", "budget_key trainer.max_epoch"),
    ]:
        with pytest.raises(ValueError, match=message):
            check(tmp_path, mapping=mapping, **({"budget_key": budget_key} if budget_key else {}))
    # a parameter no key uses is a warning: its sampled value changes nothing
    settings = yaml.safe_load(search_yaml(tmp_path).read_text())
    settings["mapping"] = {"model.init_args.x": "x"}
    out = io.StringIO()
    Study(StudySettings(**settings), console=Console(file=out, width=300)).check()
    assert "space parameter(s) y map onto no training key" in out.getvalue()


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs" / "search").glob("*.yaml")))
def test_shipped_search_configs_pass_the_mapping_checks(config, monkeypatch):
    from facenas.cli.common import parse
    from facenas.cli.search import search_parser, study_settings

    monkeypatch.chdir(REPO)
    out = io.StringIO()
    Study(
        study_settings(parse(search_parser(), ["--config", f"configs/search/{config}"])),
        console=Console(file=out),
    ).check()
    assert "warning" not in out.getvalue()


# ----------------------------------------------------------------------------- the store


def stored_study(path: Path) -> Path:
    store = StudyStore(path)
    store.set_meta(
        "settings",
        {"name": "s", "objectives": [{"metric": "err", "mode": "min"}], "base": [], "mapping": {}},
    )
    for i in range(40):
        trial = Trial(i, {"x": i / 40, "pad": "p" * 300}, 1.0, i)
        store.start(trial)
        store.finish(trial, Result(Status.SUCCESS, {"err": i / 40}))
    store.close()
    return path


def damaged(kind: str, path: Path) -> Path:
    good = stored_study(path.with_name("good.sqlite")).read_bytes()
    blob = {
        "empty": b"",
        "text": b"this is not a database\n" * 20,
        "truncated": good[: len(good) // 2],
        "garbled": good[:8192] + bytes(range(256)) * 16 + good[12288:],
        "foreign": None,
    }[kind]
    if blob is None:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        conn.close()
    else:
        path.write_bytes(blob)
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "garbled", "foreign"])
def test_a_damaged_store_is_one_line_naming_it_and_reports_never_write_it(tmp_path, kind):
    path = damaged(kind, tmp_path / "study.sqlite")
    before = path.read_bytes()
    out = run_facenas("search", "report", str(path))
    assert out.returncode == 2, (out.stdout[-1000:], out.stderr[-2000:])
    (line,) = out.stderr.strip().splitlines()
    assert str(path) in line and "Traceback" not in out.stderr
    assert path.read_bytes() == before  # a report opens the store read-only
    if kind != "empty":
        with pytest.raises(StoreError, match=str(path)):
            StudyStore(path)  # resume refuses it too (as one line on the command line)
        assert path.read_bytes() == before


def test_resume_of_a_damaged_or_empty_store_is_one_line(tmp_path):
    config = search_yaml(tmp_path, storage=str(tmp_path / "study.sqlite"))
    damaged("truncated", tmp_path / "study.sqlite")
    out = run_facenas("search", "run", "--config", str(config))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert str(tmp_path / "study.sqlite") in line and "not a readable study store" in line
    (tmp_path / "study.sqlite").write_bytes(b"")
    out = run_facenas("search", "run", "--config", str(config), "--resume")
    assert out.returncode == 2 and "holds no study" in out.stderr, out.stderr[-2000:]
    assert (tmp_path / "study.sqlite").read_bytes() == b""


# ----------------------------------------------------------------------------- SIGTERM / SIGINT


def start_search(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACENAS_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "facenas", "search", "run", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_training(store_path: Path, finished: int, timeout: float = 600) -> list[int]:
    """Wait until ``finished`` trials finished and a running trial is inside its training (its
    metrics file exists); returns the running trials' ids."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.1)
        if not store_path.is_file():
            continue
        try:
            rows = StudyStore(store_path, read_only=True).trials()
        except (StoreError, sqlite3.Error):
            continue
        running = [r.trial.id for r in rows if r.result is None]
        in_training = [
            tid for tid in running if (store_path.parent / f"trial_{tid:04d}" / "logs" / "metrics.csv").is_file()
        ]
        if sum(r.result is not None for r in rows) >= finished and in_training:
            return running
    raise AssertionError("no trial reached its training in time")


def stop(proc: subprocess.Popen, signum: int) -> tuple[str, str]:
    """Send ``signum``; returns (stdout, stderr) once the process exited (a hang fails the test)."""
    proc.send_signal(signum)
    return proc.communicate(timeout=120)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def trainers(pid: int) -> list[psutil.Process]:
    """The `facenas fit` processes below ``pid`` (trials)."""
    out = []
    for p in descendants(pid):
        try:
            if "fit" in p.cmdline():
                out.append(p)
        except psutil.Error:
            pass
    return out


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    """Every process ended (zombies waiting for a reaper count as ended)."""
    deadline = time.time() + timeout
    left = processes
    while time.time() < deadline:
        left = [p for p in left if alive(p)]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"still running: {[p.pid for p in left]}")


@pytest.mark.slow
def test_sigterm_stops_an_in_process_study_and_resume_loses_and_repeats_nothing(tmp_path):
    """SIGTERM used to record the trial in flight as failed (Lightning's SIGTERMException) and go
    on with the next trial; now the study stops within seconds with exit code 143, the trial in
    flight is left to run again, and the resumed study finishes with nothing lost or repeated."""
    config = search_yaml(tmp_path, sleep=0.3)
    store_path = tmp_path / "runs" / "study.sqlite"
    proc = start_search(config)
    try:
        in_flight = wait_for_training(store_path, finished=1)
        stdout, stderr = stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr.strip().splitlines()[-1]
    rows = StudyStore(store_path, read_only=True).trials()
    assert not [r for r in rows if r.status == Status.FAILED], [r.result.error for r in rows if r.result]
    assert [r.trial.id for r in rows if r.result is None] == in_flight  # left to run again
    before = {r.trial.id: (r.trial.config, r.result.values) for r in rows if r.result is not None}
    configs = {r.trial.id: r.trial.config for r in rows}

    out = run_facenas("search", "run", "--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    after = StudyStore(store_path, read_only=True).trials()
    assert [r.trial.id for r in after] == list(range(4)) and all(r.status == Status.SUCCESS for r in after)
    for tid, (config_before, values_before) in before.items():  # nothing finished lost or redone
        assert after[tid].trial.config == config_before and after[tid].result.values == values_before
    for tid in in_flight:  # the interrupted trial ran again under its own id and configuration
        assert after[tid].trial.config == configs[tid]
    assert len({config_key(r.trial.config) for r in after}) == 4  # no configuration twice
    assert "resuming with" in out.stdout


def test_sigint_stops_an_in_process_study_with_exit_code_130(tmp_path):
    config = search_yaml(tmp_path, sleep=0.3, n_trials=3)
    store_path = tmp_path / "runs" / "study.sqlite"
    proc = start_search(config)
    try:
        in_flight = wait_for_training(store_path, finished=0)
        stdout, stderr = stop(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "stopped by SIGINT" in stderr.strip().splitlines()[-1]
    rows = StudyStore(store_path, read_only=True).trials()
    assert [r.trial.id for r in rows if r.result is None] == in_flight
    assert not [r for r in rows if r.status == Status.FAILED]


@pytest.mark.parametrize(
    "executor",
    [
        {"class_path": "subprocess", "init_args": {"workers": 2}},
        pytest.param({"class_path": "dask", "init_args": {"workers": 2}}, marks=pytest.mark.slow),
    ],
    ids=["subprocess", "dask"],
)
def test_sigterm_terminates_subprocess_and_dask_trials(tmp_path, executor):
    config = search_yaml(tmp_path, sleep=0.3, executor=executor, n_trials=6)
    store_path = tmp_path / "runs" / "study.sqlite"
    proc = start_search(config)
    try:
        wait_for_training(store_path, finished=0)
        children = descendants(proc.pid)  # trial processes (and Dask's workers)
        assert trainers(proc.pid)
        stdout, stderr = stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr.strip().splitlines()[-1]
    assert_gone(children)  # no trial keeps training (or writing into its folder) after the study
    rows = StudyStore(store_path, read_only=True).trials()
    assert not [r for r in rows if r.status == Status.FAILED], [r.result.error for r in rows if r.result]
    assert any(r.result is None for r in rows)  # the trials in flight run again on resume


@pytest.mark.slow
def test_a_trial_stopped_by_someone_else_runs_again(tmp_path):
    """A trial whose `facenas fit` is terminated while the study is not stopping (a worker's
    shutdown) is neither failed nor lost: it runs again and the study completes."""
    config = search_yaml(
        tmp_path,
        sleep=0.3,
        executor={"class_path": "subprocess", "init_args": {"workers": 1}},
        n_trials=1,
    )
    store_path = tmp_path / "runs" / "study.sqlite"
    proc = start_search(config)
    try:
        (victim,) = wait_for_training(store_path, finished=0)
        (trainer,) = trainers(proc.pid)
        trainer.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    rows = StudyStore(store_path, read_only=True).trials()
    assert [(r.trial.id, r.status) for r in rows] == [(victim, Status.SUCCESS)]  # neither failed nor lost


# ----------------------------------------------------------------------------- facenas fit


def fit_config(tmp_path: Path, **trainer) -> Path:
    config = {
        "model": {"class_path": "facenas.demos.toy.ToySearchModule", "init_args": {"sleep": 0.1}},
        "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 8, "batch_size": 2}},
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 500,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy"},
            },
            **trainer,
        },
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigterm_saves_a_resumable_checkpoint_and_fit_exits_143(tmp_path):
    config = fit_config(tmp_path)
    last = tmp_path / "runs" / "toy" / "version_0" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACENAS_PROGRESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "facenas", "fit", "--config", str(config), "--test_after_fit", "false"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not last.is_file() and time.time() < deadline:  # an epoch ended: training is under way
            time.sleep(0.1)
        time.sleep(1.0)
        signalled = time.time()
        stdout, stderr = stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("facenas fit: stopped by SIGTERM") and f"; saved {last}" in line
    assert "--ckpt_path last" in line
    assert last.stat().st_mtime >= signalled  # written on SIGTERM, not only at the last epoch's end
    assert not list(last.parent.glob("*.part"))
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] > 0
    epochs = saved["epoch"] + 2
    resumed = run_facenas(
        "fit",
        "--config",
        str(config),
        "--ckpt_path",
        "last",
        "--trainer.max_epochs",
        str(epochs),
        "--test_after_fit",
        "false",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"using last checkpoint {last}" in resumed.stderr
    final = torch.load(tmp_path / "runs/toy/version_1/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == epochs - 1 and final["global_step"] == epochs * 4  # 4 batches an epoch, none redone


# ----------------------------------------------------------------------------- corrupt checkpoints


def corrupt_checkpoints(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 0}, good)
    data = good.read_bytes()
    out = {
        "garbage": tmp_path / "garbage.ckpt",
        "truncated": tmp_path / "truncated.ckpt",
        "garbled": tmp_path / "garbled.ckpt",
        "text": tmp_path / "text.ckpt",
    }
    out["garbage"].write_bytes(bytes(range(256)) * 64)
    out["truncated"].write_bytes(data[: len(data) // 2])
    middle = len(data) // 2
    out["garbled"].write_bytes(data[:middle] + bytes(range(64)) + data[middle + 64 :])  # same size, bad CRC
    out["text"].write_text("not a checkpoint\n")
    return out


def test_check_checkpoint_names_the_file_for_every_kind_of_damage(tmp_path):
    from facenas.core.errors import UserError
    from facenas.training.cli import check_checkpoint

    for path in corrupt_checkpoints(tmp_path).values():
        with pytest.raises(UserError, match=str(path)):
            check_checkpoint(path)
    check_checkpoint(tmp_path / "good.ckpt")
    torch.save({"weights": 1}, tmp_path / "plain.ckpt")
    with pytest.raises(UserError, match="not a Lightning checkpoint"):
        check_checkpoint(tmp_path / "plain.ckpt")


@pytest.mark.parametrize("verb", ["fit", "validate", "test", "predict"])
def test_a_corrupt_ckpt_path_is_one_line_naming_the_file(tmp_path, verb):
    config = fit_config(tmp_path, max_epochs=1)
    bad = corrupt_checkpoints(tmp_path)["truncated" if verb in ("fit", "test") else "garbage"]
    out = run_facenas(verb, "--config", str(config), "--ckpt_path", str(bad), cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"facenas {verb}: error:") and str(bad) in line and "Traceback" not in out.stderr


def test_a_corrupt_last_checkpoint_and_probe_ckpt_are_one_line(tmp_path):
    config = fit_config(tmp_path, max_epochs=1)
    last = tmp_path / "runs" / "toy" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    shutil.copy(corrupt_checkpoints(tmp_path)["truncated"], last)
    out = run_facenas("fit", "--config", str(config), "--ckpt_path", "last", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert str(last) in out.stderr.strip().splitlines()[-1]
    bad = tmp_path / "garbled.ckpt"
    out = run_facenas(
        "probe",
        "--config",
        "configs/recognition/quickstart.yaml",
        "--ckpt_path",
        str(bad),
        "--attribute",
        "gender",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("facenas probe: error:") and str(bad) in line
