"""Search: spaces, mapping, store, every backend through YAML-style specs, the driver's failure
handling and resume after SIGKILL, Dask workers, reports, and the FR-NAS tabular replay."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ConfigSpace import ConfigurationSpace, Float

from facenas.core.pareto import hypervolume, pareto_mask
from facenas.search.backends import create_searcher
from facenas.search.executors import DaskExecutor
from facenas.search.replay import FRNASTable
from facenas.search.spaces import apply_mapping, load_space
from facenas.search.store import StudyStore
from facenas.search.study import Study, StudySettings
from facenas.search.trial import Objective, Result, Status, Trial
from facenas.training import nested

from .conftest import REPO, data_path, run_facenas

# ----------------------------------------------------------------------------- spaces


def test_hyperfd_space_is_table_2():
    cs = load_space("hyperfd_hpo")
    sizes = {hp.name: len(hp.sequence if hasattr(hp, "sequence") else hp.choices) for hp in cs.values()}
    assert sizes == {"optimizer": 2, "lr": 3, "min_crop_ratio": 2, "pos_iou": 3, "loc_weight": 3, "neg_pos_ratio": 2}
    assert math.prod(sizes.values()) == 216
    assert set(cs["lr"].sequence) == {3e-4, 1e-3, 3e-3}
    assert set(load_space("hyperfd_hpo_lr3e-2")["lr"].sequence) == {3e-4, 1e-3, 3e-2}


def test_frnas_joint_learning_rate_follows_the_optimizer():
    cs = load_space("frnas_joint", seed=3)
    for config in cs.sample_configuration(200):
        c = dict(config)
        assert ("lr_sgd" in c) == (c["optimizer"] == "sgd") and ("lr_adam" in c) == (c["optimizer"] != "sgd")
        lr = c.get("lr_sgd", c.get("lr_adam"))
        assert (0.09 <= lr <= 0.8) if c["optimizer"] == "sgd" else (1e-4 <= lr <= 1e-2)
    assert set(cs["optimizer"].choices) == {"sgd", "adam", "adamw"}  # the names the models take
    assert [cs[f"edge{i}"].choices for i in (1, 2, 3)] == [tuple(str(k) for k in range(9))] * 3
    assert len(load_space("frnas_phase1")["backbone"].choices) == 29


def test_mapping_templates_and_conditional_parameters():
    mapping = {
        "model.init_args.backbone": "dpn_search_small_{edge1}{edge2}{edge3}",
        "model.init_args.lr": "lr_adam",
        "model.init_args.lr|sgd": "lr_sgd",
        "model.init_args.head": "head",
    }
    out = apply_mapping(
        {"edge1": "3", "edge2": "0", "edge3": "1", "head": "CosFace", "optimizer": "sgd", "lr_sgd": 0.2}, mapping
    )
    assert out == {
        "model.init_args.backbone": "dpn_search_small_301",
        "model.init_args.lr": 0.2,
        "model.init_args.head": "CosFace",
    }
    assert nested(out)["model"]["init_args"]["lr"] == 0.2
    with pytest.raises(ValueError, match="unknown search space"):
        load_space("nope")


# ----------------------------------------------------------------------------- store and reports


def test_store_round_trip_and_atomic_rows(tmp_path):
    store = StudyStore(tmp_path / "s.sqlite")
    trial = Trial(id=0, config={"x": 0.5, "opt": "SGD"}, budget=4.0, seed=7)
    store.start(trial)
    assert store.trials()[0].status == Status.RUNNING
    store.finish(
        trial,
        Result(Status.SUCCESS, {"val/error": 0.25, "val/ratio": math.inf}, 1.5, None, "runs/t0", [(0, 0.5), (1, 0.25)]),
    )
    (row,) = StudyStore(tmp_path / "s.sqlite").trials()  # a second connection sees the committed row
    assert row.trial.config == {"x": 0.5, "opt": "SGD"} and row.trial.budget == 4.0 and row.trial.seed == 7
    assert row.result.values == {"val/error": 0.25, "val/ratio": math.inf} and row.result.intermediate == [
        (0, 0.5),
        (1, 0.25),
    ]
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_written_before_the_backend_seed_column_opens_and_resumes(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE trials (id INTEGER PRIMARY KEY, config TEXT NOT NULL, budget REAL, seed INTEGER NOT NULL, "
            "status TEXT NOT NULL, objectives TEXT, intermediate TEXT, error TEXT, run_dir TEXT, "
            "started REAL NOT NULL, finished REAL, duration REAL);"
            "INSERT INTO trials (id, config, budget, seed, status, started) "
            "VALUES (0, '{\"x\": 1}', 2.0, 5, 'running', 0);"
        )
    store = StudyStore(path)
    assert store.trials()[0].trial == Trial(0, {"x": 1}, 2.0, 5)
    store.start(Trial(1, {"x": 2}, 1.0, 6, backend_seed=9))
    assert store.trials()[1].trial.backend_seed == 9


def test_pareto_and_hypervolume():
    costs = np.array([[1.0, 4.0], [2.0, 2.0], [3.0, 3.0], [4.0, 1.0], [np.inf, np.inf]])
    assert pareto_mask(costs[:4]).tolist() == [True, True, False, True]
    # staircase under (5, 5): (5-1)*1 + ... computed by hand: 1x1 + 1x3 + 2x4 = 12
    assert hypervolume(costs, [5.0, 5.0]) == pytest.approx(1 * (5 - 4) + 2 * (5 - 2) + 1 * (5 - 1) - 0)
    assert hypervolume(np.array([[0.5, 0.5, 0.5]]), [1, 1, 1]) == pytest.approx(0.125)
    assert hypervolume(np.array([[0.5, 0.5, 0.5], [0.0, 0.9, 0.9]]), [1, 1, 1]) == pytest.approx(0.125 + 0.01 * 0.5)


# ----------------------------------------------------------------------------- backends


def quadratic(trial: Trial) -> Result:
    """A cheap two-objective function of frnas_joint-like configs, failing for edge1 == '8'."""
    c = trial.config
    if c.get("edge1") == "8":
        return Result(Status.FAILED, error="edge 8 diverged")
    lr = c.get("lr_adam", c.get("lr_sgd", 0.1))
    budget = trial.budget or 1.0
    a = (int(c["edge1"]) - 3) ** 2 / 10 + abs(math.log10(lr) + 2.5) + 1.0 / budget
    b = (int(c["edge2"]) - 6) ** 2 / 10 + (0.5 if c["head"] == "MagFace" else 0.0)
    return Result(Status.SUCCESS, {"err": a, "rd": b})


SPECS = [
    "random",
    {"class_path": "smac", "init_args": {"facade": "hpo", "n_initial": 5}},
    {"class_path": "smac", "init_args": {"facade": "mf", "incumbent_selection": "highest_budget"}},
    {"class_path": "facenas.search.backends.SMACSearcher", "init_args": {"facade": "hyperband"}},
    {"class_path": "optuna", "init_args": {"sampler": "tpe", "n_startup_trials": 5}},
    {"class_path": "optuna", "init_args": {"sampler": "nsga2", "population_size": 6}},
    {"class_path": "optuna", "init_args": {"sampler": "motpe"}},
    {"class_path": "moasha", "init_args": {"eta": 2}},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: json.dumps(s, sort_keys=True))
@pytest.mark.parametrize("objectives", [1, 2])
def test_every_backend_runs_a_study_from_its_yaml_spec(tmp_path, spec, objectives):
    multi_fidelity = isinstance(spec, dict) and (
        spec["class_path"] == "moasha" or spec.get("init_args", {}).get("facade") in ("mf", "hyperband")
    )
    settings = StudySettings(
        name="q",
        space="frnas_joint",
        objectives=[Objective("err"), Objective("rd")][:objectives],
        backend=spec,
        budget={"min": 1, "max": 8, "eta": 2} if multi_fidelity else None,
        n_trials=24,
        seed=1,
        storage=str(tmp_path / "q.sqlite"),
        runs_dir=str(tmp_path),
        report=False,
    )
    store = Study(settings, objective=quadratic, quiet=True).run()
    trials = store.trials()
    assert len(trials) == 24 and {t.status for t in trials} <= {Status.SUCCESS, Status.FAILED}
    assert [t.trial.id for t in trials] == list(range(24))
    if multi_fidelity:
        assert len({t.trial.budget for t in trials}) > 1  # several fidelities were used
    failures = [t for t in trials if t.status == Status.FAILED]
    assert all(t.result.error == "edge 8 diverged" for t in failures)


def test_smac_multi_objective_multi_fidelity_reaches_the_top_budget(tmp_path):
    """ParEGO + Hyperband with facenas's incumbent rule (highest_budget, the default): 40 trials
    run, configurations are promoted to the top budget, and the Pareto front is at that budget."""
    settings = StudySettings(
        name="mf",
        space="frnas_joint",
        objectives=[Objective("err"), Objective("rd")],
        budget={"min": 1, "max": 8, "eta": 2},
        n_trials=40,
        seed=0,
        runs_dir=str(tmp_path),
        report=False,
        storage=str(tmp_path / "ok.sqlite"),
        backend={"class_path": "smac", "init_args": {"facade": "mf"}},
    )
    trials = Study(settings, objective=quadratic, quiet=True).run().trials()
    assert len(trials) == 40 and sorted({t.trial.budget for t in trials}) == [1.0, 2.0, 4.0, 8.0]
    promoted = {json.dumps(t.trial.config, sort_keys=True) for t in trials if t.trial.budget == 8.0}
    lower = {json.dumps(t.trial.config, sort_keys=True) for t in trials if t.trial.budget < 8.0}
    assert promoted & lower  # successive halving promoted configurations up to the top budget


def test_backends_are_told_about_failures():
    space = load_space("frnas_joint", seed=0)
    objectives = [Objective("err")]
    smac = create_searcher({"class_path": "smac", "init_args": {"facade": "hpo"}})
    smac.setup(space, objectives, None, 0, 10)
    trial = smac.ask()
    smac.tell(trial, Result(Status.FAILED, error="boom"))
    from smac.runhistory.enumerations import StatusType

    assert [v.status for v in smac.smac.runhistory.values()] == [StatusType.CRASHED]
    optuna_searcher = create_searcher("optuna")
    optuna_searcher.setup(space, objectives, None, 0, 10)
    trial = optuna_searcher.ask()
    optuna_searcher.tell(trial, Result(Status.FAILED, error="boom"))
    assert optuna_searcher.study.trials[0].state.name == "FAIL"


def test_smac_scratch_folder_is_removed_by_close_or_collection():
    import gc

    space = load_space("frnas_joint", seed=0)
    folders = []
    for closed in (True, False):
        smac = create_searcher({"class_path": "smac", "init_args": {"facade": "hpo"}})
        smac.setup(space, [Objective("err")], None, 0, 4)
        smac.ask()
        folder = smac._outdir
        assert folder.is_dir()
        if closed:
            smac.close()
        del smac
        gc.collect()
        folders.append(folder)
    assert not any(f.exists() for f in folders)


def test_unknown_backend_and_bad_options():
    with pytest.raises(ValueError, match="unknown backend 'bayes'"):
        create_searcher("bayes")
    with pytest.raises(ValueError, match="facade must be one of"):
        create_searcher({"class_path": "smac", "init_args": {"facade": "gp"}})
    with pytest.raises(ValueError, match="unexpected keyword"):
        create_searcher({"class_path": "optuna", "init_args": {"samplr": "tpe"}})


# ----------------------------------------------------------------------------- training trials


def toy_space(tmp_path: Path) -> str:
    cs = ConfigurationSpace(name="toy", seed=0)
    cs.add([Float("x", (0.0, 1.0)), Float("y", (0.0, 1.0))])
    path = tmp_path / "toy_space.json"
    cs.to_json(path)
    return str(path)


def toy_base(tmp_path: Path, checkpoints: bool = False, batch_size: int = 4, **module_args) -> str:
    config = {
        "model": {"class_path": "facenas.demos.toy.ToySearchModule", "init_args": module_args},
        "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 8, "batch_size": batch_size}},
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "enable_checkpointing": checkpoints},
    }
    path = tmp_path / "toy_base.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def toy_settings(tmp_path: Path, **extra) -> StudySettings:
    values = dict(
        name="toy",
        space=toy_space(tmp_path),
        base=extra.pop("base", None) or [toy_base(tmp_path)],
        mapping={"model.init_args.x": "x", "model.init_args.y": "y"},
        objectives=[{"metric": "val/score", "mode": "min"}],
        backend="random",
        n_trials=3,
        budget=2,
        storage=str(tmp_path / "study.sqlite"),
        runs_dir=str(tmp_path / "runs"),
        report=False,
    )
    values.update(extra)
    return StudySettings(**values)


def test_in_process_trials_read_objectives_and_record_failures(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    settings = toy_settings(tmp_path, n_trials=3, overrides={})
    store = Study(settings, quiet=True).run()
    trials = store.trials()
    assert [t.status for t in trials] == [Status.SUCCESS] * 3
    for t in trials:  # the last validation (epoch 1) of (x - 0.3)^2 + y^2 + 1/(epoch + 1)
        want = (t.trial.config["x"] - 0.3) ** 2 + t.trial.config["y"] ** 2 + 0.5
        assert t.result.values["val/score"] == pytest.approx(want, rel=1e-5)
        assert (Path(t.result.run_dir) / "logs" / "metrics.csv").is_file()
    # a trial that raises and one whose loss turns NaN are failed, with their messages; the study goes on
    (tmp_path / "f").mkdir()
    rows = (
        Study(toy_settings(tmp_path / "f", n_trials=2, base=[toy_base(tmp_path / "f", fail=True)]), quiet=True)
        .run()
        .trials()
    )
    assert [r.status for r in rows] == [Status.FAILED, Status.FAILED]
    assert "RuntimeError: boom in trial" in rows[0].result.error
    (tmp_path / "n").mkdir()
    rows = (
        Study(toy_settings(tmp_path / "n", n_trials=1, base=[toy_base(tmp_path / "n", diverge=True)]), quiet=True)
        .run()
        .trials()
    )
    assert rows[0].status == Status.FAILED and "NonFiniteLossError: non-finite training loss" in rows[0].result.error


def test_in_process_and_subprocess_trials_train_alike(tmp_path, monkeypatch):
    """Both executors run the same `facenas fit` configuration: same seed, same logged metrics,
    same files in the run folder (checkpoints included)."""
    from facenas.search.runner import TrialJob, run_in_process, run_subprocess

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    base = toy_base(tmp_path, checkpoints=True)

    def job(folder: str, seed: int) -> TrialJob:
        trial = Trial(5, {"x": 0.4, "y": 0.1}, 2.0, seed)
        return TrialJob(
            trial,
            [Objective("val/score"), Objective("val/w")],
            [base],
            {"model.init_args.x": 0.4, "model.init_args.y": 0.1, "trainer.max_epochs": 2, "seed_everything": seed},
            str(tmp_path / folder),
        )

    inside, outside = run_in_process(job("inside", 17)), run_subprocess(job("outside", 17))
    assert inside.status == outside.status == Status.SUCCESS, (inside.error, outside.error)
    assert inside.values == pytest.approx(outside.values, rel=1e-6) and inside.intermediate == outside.intermediate

    def rows(folder: str) -> list[dict]:
        return list(csv.DictReader(open(tmp_path / folder / "logs" / "metrics.csv")))

    assert [{k: pytest.approx(float(v)) for k, v in r.items() if v} for r in rows("inside")] == [
        {k: float(v) for k, v in r.items() if v} for r in rows("outside")
    ]

    def files(folder: str) -> list[str]:
        return sorted(
            p.relative_to(tmp_path / folder).as_posix() for p in (tmp_path / folder).rglob("*") if p.is_file()
        )

    assert files("inside") == files("outside")
    assert {"trial.yaml", "train.log", "logs/metrics.csv", "logs/config.yaml", "logs/checkpoints/last.ckpt"} <= set(
        files("inside")
    )
    other_seed = run_in_process(job("seed18", 18))
    assert other_seed.values["val/w"] != pytest.approx(inside.values["val/w"])  # the seed is what made them equal


def test_optuna_pruner_stops_trials_on_intermediate_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    settings = toy_settings(
        tmp_path,
        n_trials=8,
        budget={"min": 1, "max": 4, "eta": 2},
        overrides={"model.init_args.y": 0.0},
        backend={"class_path": "optuna", "init_args": {"sampler": "random", "pruner": "median"}},
    )
    trials = Study(settings, quiet=True).run().trials()
    assert {t.status for t in trials} <= {Status.SUCCESS, Status.PRUNED}
    assert any(t.status == Status.PRUNED for t in trials)
    assert all(len(t.result.intermediate) >= 1 for t in trials)


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path):
    settings = {
        "name": "killed",
        "space": toy_space(tmp_path),
        "base": [toy_base(tmp_path, sleep=0.15)],
        "mapping": {"model.init_args.x": "x", "model.init_args.y": "y"},
        "objectives": [{"metric": "val/score", "mode": "min"}],
        "backend": {"class_path": "smac", "init_args": {"facade": "hpo", "n_initial": 3}},
        "n_trials": 6,
        "budget": 2,
        "runs_dir": str(tmp_path / "runs"),
        "report": False,
    }
    config = tmp_path / "facenas.search.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACENAS_PROGRESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "facenas", "search", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store_path = tmp_path / "runs" / "study.sqlite"
    deadline = time.time() + 300
    finished: list = []
    while time.time() < deadline:
        time.sleep(0.5)
        if store_path.is_file():
            rows = StudyStore(store_path).trials()
            finished = [r for r in rows if r.result is not None]
            if len(finished) >= 2 and any(r.result is None for r in rows):
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {
        r.trial.id: (r.trial.config, r.result.values) for r in StudyStore(store_path).trials() if r.result is not None
    }
    in_flight = [r.trial.id for r in StudyStore(store_path).trials() if r.result is None]
    assert len(before) >= 2 and in_flight
    out = run_facenas("search", "run", "--config", str(config), "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    after = StudyStore(store_path).trials()
    assert len(after) == 6 and [r.trial.id for r in after] == list(range(6))
    assert all(r.status == Status.SUCCESS for r in after)
    for tid, (config_before, values_before) in before.items():  # nothing finished was lost or redone
        assert after[tid].trial.config == config_before and after[tid].result.values == values_before
    assert all(after[tid].result is not None for tid in in_flight)  # the interrupted trial ran again
    assert "resuming with" in out.stdout


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """One two-worker LocalCluster for this module's Dask tests (its workers start `facenas fit`
    subprocesses in the repository, with this checkout on PYTHONPATH); yields its address. The
    executor's own LocalCluster is tested by test_study_robustness's SIGTERM of a Dask study."""
    from distributed import LocalCluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "FACENAS_PROGRESS")}
    os.environ.update(PYTHONPATH=str(REPO), FACENAS_PROGRESS="0")  # the workers' (and their trials') environment
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    finally:
        os.chdir(cwd)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_two_worker_local_dask_cluster_runs_subprocess_trials(tmp_path, monkeypatch, dask_cluster):
    monkeypatch.chdir(REPO)
    settings = toy_settings(
        tmp_path,
        n_trials=2,
        base=[toy_base(tmp_path, sleep=0.2)],
        executor={"class_path": "dask", "init_args": {"scheduler": dask_cluster, "workers": 2}},
    )
    trials = Study(settings, quiet=True).run().trials()
    assert [t.status for t in trials] == [Status.SUCCESS] * 2, [t.result.error for t in trials]
    spans = sorted((t.started, t.finished) for t in trials)
    assert any(b[0] < a[1] for a, b in itertools.combinations(spans, 2))  # two trials ran at the same time


def test_dask_executor_reports_a_lost_job(tmp_path, monkeypatch, dask_cluster):
    """A job that raises on its worker outside the trial (here: its run folder cannot be made)
    comes back as a failed trial naming the error, not as an exception of the study."""
    from facenas.search.runner import TrialJob

    monkeypatch.chdir(REPO)
    (tmp_path / "a_file").write_text("")
    job = TrialJob(Trial(7, {}), [Objective("val/score")], [toy_base(tmp_path)], {}, str(tmp_path / "a_file" / "t"))
    executor = DaskExecutor(scheduler=dask_cluster, workers=1)
    try:
        executor.submit(job)
        ((trial_id, result),) = executor.collect(timeout=60)
        assert trial_id == 7 and result.status == Status.FAILED and "NotADirectoryError" in result.error, result
        assert executor.running == 0
    finally:
        executor.close()


def test_dask_reruns_the_trial_of_a_lost_worker(tmp_path, monkeypatch, dask_cluster):
    import psutil

    from facenas.search.runner import TrialJob

    monkeypatch.chdir(REPO)
    job = TrialJob(
        Trial(3, {}),
        [Objective("val/score", "min")],
        [toy_base(tmp_path, sleep=2.0)],
        {"model.init_args.x": 0.1},
        str(tmp_path / "trial"),
    )
    executor = DaskExecutor(scheduler=dask_cluster, workers=2)
    try:
        executor.submit(job)
        deadline, trainers = time.time() + 120, []
        while not trainers and time.time() < deadline:  # wait for the trial's `facenas fit` to start
            time.sleep(0.2)
            busy = [w for w, keys in executor.client.processing().items() if keys]
            if busy:
                worker = psutil.Process(executor.client.run(os.getpid, workers=busy)[busy[0]])
                trainers = worker.children()
        assert trainers, "the trial never started"
        worker.kill()  # the worker dies mid-trial (SIGKILL)
        gone, alive = psutil.wait_procs(trainers, timeout=5)  # it had 8 s of training left
        assert not alive  # its training process died with it instead of running on as an orphan
        ((trial_id, result),) = executor.collect(timeout=300)
        assert trial_id == 3 and result.status == Status.SUCCESS, result.error
        assert result.values["val/score"] == pytest.approx((0.1 - 0.3) ** 2 + 0.5)
        assert busy[0] not in executor.client.scheduler_info()["workers"]  # it ran again elsewhere
    finally:
        executor.close()


def test_search_cli_report_and_exported_yaml(tmp_path):
    settings = toy_settings(tmp_path, n_trials=3).as_dict()
    settings["objectives"] = [{"metric": "val/score", "mode": "min"}, {"metric": "val/other", "mode": "min"}]
    settings["report"] = True
    config = tmp_path / "facenas.search.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in settings.items() if v is not None}))
    out = run_facenas("search", "run", "--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "runs"
    for name in ("trials.csv", "summary.json", "pareto.png", "history.png"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] == 3 and summary["pareto"] and len(summary["hypervolume_history"]) == 3
    assert summary["backend"] == "random"
    exported_path = Path(summary["exported"][0])
    exported = yaml.safe_load(exported_path.read_text())
    best = next(t for t in summary["pareto"] if exported_path.name == f"pareto_{t['id']}.yaml")
    assert (
        exported["model"]["init_args"]["x"] == pytest.approx(best["config"]["x"])
        and exported["trainer"]["max_epochs"] == 2
    )
    stored = {t.trial.id: t for t in StudyStore(tmp_path / "study.sqlite").trials()}[best["id"]]
    assert exported["seed_everything"] == stored.trial.seed == settings["seed"] + best["id"]
    # re-running the exported YAML trains the measured trial again: the same metrics, the seeded weight included
    rerun = run_facenas(
        "fit",
        "--config",
        str(exported_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "rerun"),
        "--test_after_fit",
        "false",
        cwd=tmp_path,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (metrics,) = (tmp_path / "rerun").rglob("metrics.csv")
    last = {k: float(v) for row in csv.DictReader(open(metrics)) for k, v in row.items() if v}
    for metric in ("val/score", "val/other"):
        assert last[metric] == pytest.approx(best["values"][metric], rel=1e-6)
    trial_metrics = {
        k: float(v)
        for row in csv.DictReader(open(Path(stored.result.run_dir) / "logs" / "metrics.csv"))
        for k, v in row.items()
        if v
    }
    assert last["val/w"] == pytest.approx(trial_metrics["val/w"], rel=1e-6)
    again = run_facenas("search", "report", str(tmp_path / "study.sqlite"))
    assert again.returncode == 0 and "Pareto front" in again.stdout
    assert run_facenas("search", "report", str(tmp_path / "nowhere")).returncode == 2
    changed = dict(settings, seed=5)
    config.write_text(yaml.safe_dump({k: v for k, v in changed.items() if v is not None}))
    clash = run_facenas("search", "run", "--config", str(config))
    assert clash.returncode == 2 and "different seed" in clash.stderr
    missing = run_facenas(
        "search", "run", "--config", str(config), "--name", "other", "--storage", str(tmp_path / "o.sqlite"), "--resume"
    )
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr


# ----------------------------------------------------------------------------- replay


def test_frnas_replay_table_and_short_replays():
    table = FRNASTable(data_path("..", "benchmarks", "frnas", "analysis_vgg_val_phase1.csv"))
    assert len(table.rows) == 338 and sum(v["Error"] == 1.0 for v in table.rows.values()) == 50
    row = table(Trial(0, {"backbone": "selecsls60b", "head": "MagFace", "optimizer": "SGD", "schedule": "default"}))
    assert row.status == Status.SUCCESS and row.values["Error"] == pytest.approx(0.2852614379084968)
    other = table(
        Trial(0, {"backbone": "gluon_inception_v3", "head": "CosFace", "optimizer": "AdamW", "schedule": "default"})
    )
    assert other.status == Status.SUCCESS and other.values["Rank Disparity"] == pytest.approx(2.211961)
    diverged = table(Trial(0, {"backbone": "vgg19", "head": "MagFace", "optimizer": "SGD", "schedule": "default"}))
    assert (
        diverged.status == Status.SUCCESS and diverged.values["Error"] == 1.0
    )  # a real (diverged) outcome, as published
    assert "Ratio" not in diverged.values  # its empty Ratio cell is left out, not a number
    untrained = table(Trial(0, {"backbone": "dla102x2", "head": "ArcFace", "optimizer": "SGD", "schedule": "cosine"}))
    assert untrained.status == Status.FAILED and untrained.error == "configuration not trained in the FR-NAS study"
    for spec in ("random", {"class_path": "optuna", "init_args": {"sampler": "nsga2"}}):
        settings = StudySettings(
            name="r",
            space="frnas_phase1",
            objectives=[Objective("Error"), Objective("Rank Disparity")],
            backend=spec,
            n_trials=30,
            storage=":memory:",
            runs_dir="runs/unused",
            report=False,
        )
        trials = Study(settings, objective=table, quiet=True).run().trials()
        assert len(trials) == 30 and any(t.status == Status.SUCCESS for t in trials)


def test_subprocess_pool_runs_trials_side_by_side(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    settings = toy_settings(
        tmp_path,
        n_trials=2,
        base=[toy_base(tmp_path, sleep=0.2)],
        executor={"class_path": "subprocess", "init_args": {"workers": 2}},
    )
    trials = Study(settings, quiet=True).run().trials()
    assert [t.status for t in trials] == [Status.SUCCESS] * 2, [t.result.error for t in trials]
    assert all((Path(t.result.run_dir) / "train.log").is_file() for t in trials)
    spans = sorted((t.started, t.finished) for t in trials)
    assert any(b[0] < a[1] for a, b in itertools.combinations(spans, 2))


def test_wandb_run_per_trial_and_a_study_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wb").mkdir()
    settings = toy_settings(tmp_path, n_trials=2, wandb={"project": "facenas-test"})
    trials = Study(settings, quiet=True).run().trials()
    assert [t.status for t in trials] == [Status.SUCCESS] * 2
    runs = list(Path(tmp_path).rglob("offline-run-*"))
    assert len(runs) == 3  # two trials and the study summary
    records = b"".join(p.read_bytes() for run in runs for p in run.glob("*.wandb"))
    assert b"toy-trial-0" in records and b"toy-summary" in records and b"study-summary" in records
