"""HyperFD's lookup-table builder: `facenas hyperfd build / export` on the tiny YAML, killed
with SIGKILL mid-way and resumed with nothing lost or repeated; the list backend; candidate pools."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from facenas.hyperfd.table.build import TableConfig, canonical, rows
from facenas.search.backends import ListSearcher, SpaceExhausted
from facenas.search.spaces import load_space, nas_arch
from facenas.search.store import StudyStore
from facenas.search.trial import Objective, Result, Status, Trial

from .conftest import REPO, run_facenas

TINY = REPO / "configs" / "hyperfd" / "tiny.yaml"


def tiny_settings(tmp_path, **changes) -> TableConfig:
    data = yaml.safe_load(TINY.read_text())
    data["base"] = [str(REPO / p) for p in data["base"]]
    data["root"] = str(tmp_path / "table")
    data.update(changes)
    return TableConfig(**data)


def test_pools_are_the_same_for_every_dataset_and_seeded(tmp_path):
    settings = tiny_settings(tmp_path, pool={"n": 48, "seed": 3}, noise={"configs": 8, "seeds": [1, 2]})
    configs = settings.configurations()
    assert len(configs) == 48 and len({json.dumps(c, sort_keys=True) for c in configs}) == 48
    assert configs == tiny_settings(tmp_path, pool={"n": 48, "seed": 3}).configurations()
    assert configs != tiny_settings(tmp_path, pool={"n": 48, "seed": 4}).configurations()
    assert len(tiny_settings(tmp_path, pool={"all": True}).configurations()) == 216
    studies = list(settings.studies())
    # seed by seed: the pool at seed 0 on every dataset, then the first 8 configurations at seeds 1 and 2
    assert [(d.name, s, len(c)) for d, s, c, _ in studies] == [
        ("plain", 0, 48), ("masked", 0, 48), ("plain", 1, 8), ("masked", 1, 8), ("plain", 2, 8), ("masked", 2, 8),
    ]  # fmt: skip
    assert all(c == configs[: len(c)] for _, _, c, _ in studies)
    plain = studies[2][3]
    assert plain.overrides["seed_everything"] == 1 and plain.overrides["data.init_args.synthetic_domains"] == ["plain"]
    nas = tiny_settings(tmp_path, space="hyperfd_nas", pool={"n": 30, "seed": 0}).configurations()
    assert len({nas_arch(c) for c in nas}) == 30
    with pytest.raises(ValueError, match="exceeds the 216"):
        tiny_settings(tmp_path, pool={"n": 300}).configurations()


def test_table_names_and_default_ranker_paths_do_not_collide(tmp_path):
    """runs/hyperfd/ holds the tables and the hyperfd verbs' own folders: a table may not take
    one of those names, and a ranker trained from an exported table.csv is named by its table."""
    from facenas.hyperfd.table.evaluation import default_ranker_path

    for name in ("features", "evaluation", "rankers"):
        with pytest.raises(ValueError, match=f"table name '{name}' is taken"):
            TableConfig(**{**yaml.safe_load(TINY.read_text()), "name": name})
    assert default_ranker_path("runs/hyperfd/tiny/table.csv", "detector").as_posix() == (
        "runs/hyperfd/rankers/tiny-detector.pt"
    )
    assert default_ranker_path("somewhere/cpu.csv", "timm:resnet18").name == "cpu-timm_resnet18.pt"


def test_list_backend_proposes_its_list_once_and_checks_it():
    space = load_space("hyperfd_hpo")
    configs = [dict(space.sample_configuration()) for _ in range(3)]
    configs = [{k: (v.item() if hasattr(v, "item") else v) for k, v in c.items()} for c in configs]
    searcher = ListSearcher(configs=configs)
    searcher.setup(space, [Objective("val/ap50", "max")], None, 0, 3)
    searcher.tell(Trial(0, configs[1]), Result(Status.SUCCESS, {"val/ap50": 0.5}))  # already in the store
    assert [searcher.ask().config for _ in range(2)] == [configs[0], configs[2]]
    with pytest.raises(SpaceExhausted, match="all 3 configurations of the list"):
        searcher.ask()
    bad = ListSearcher(configs=[{**configs[0], "lr": 0.5}])
    with pytest.raises(ValueError, match="listed configuration 0 is not one of space 'hyperfd_hpo'"):
        bad.setup(space, [Objective("val/ap50", "max")], None, 0, 1)


def test_canonical_form_is_readable_and_shows_the_architecture():
    hpo = {"optimizer": "sgd", "lr": 0.001, "pos_iou": 0.5}
    assert canonical(hpo) == "lr=0.001;optimizer=sgd;pos_iou=0.5"
    nas = dict(load_space("hyperfd_nas").sample_configuration())
    assert canonical(nas) == f"arch={nas_arch(nas)}"


def wait_for_entries(store_path, n: int, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store_path.is_file():
            done = sum(t.result is not None for t in StudyStore(store_path, read_only=True).trials())
            if done >= n:
                return
        if proc.poll() is not None:
            raise AssertionError(f"the build ended before {n} entries (exit code {proc.returncode})")
        time.sleep(0.5)
    raise AssertionError(f"no {n} entries within {timeout} s")


@pytest.mark.slow
def test_build_is_killed_and_resumed_then_exported(tmp_path):
    """2 synthetic datasets x 4 configurations: SIGKILL after the second entry, build again:
    8 entries, each (dataset, configuration) once, the first two untouched; export: 8 rows."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACENAS_PROGRESS": "0"}
    command = [sys.executable, "-m", "facenas", "hyperfd", "build", "--config", str(TINY)]
    # the tiny YAML names its base relative to the repository
    (tmp_path / "configs").symlink_to(REPO / "configs")
    log = open(tmp_path / "build.log", "w")  # a file, not a pipe nobody reads while the build runs
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    first = tmp_path / "runs/hyperfd/tiny/plain/seed0/study.sqlite"
    try:
        wait_for_entries(first, 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    before = {r["key"]: r for r in rows(tmp_path / "runs/hyperfd/tiny")}
    assert len(before) >= 2

    out = run_facenas("hyperfd", "build", "--config", str(TINY), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "table tiny: 8 success" in out.stdout
    table = rows(tmp_path / "runs/hyperfd/tiny")
    assert len(table) == 8
    assert sorted((r["dataset"], r["key"]) for r in table) == sorted({(r["dataset"], r["key"]) for r in table})
    assert {r["dataset"] for r in table} == {"plain", "masked"}
    for row in table:
        assert 0 <= row["val_ap50"] <= 1 and 0 <= row["test_ap50"] <= 1 and row["status"] == "success"
        if row["dataset"] == "plain" and row["key"] in before:
            assert row == before[row["key"]]  # finished entries are kept as they were
    # the same configurations on both datasets
    assert {r["key"] for r in table if r["dataset"] == "plain"} == {r["key"] for r in table if r["dataset"] == "masked"}

    again = run_facenas("hyperfd", "build", "--config", str(TINY), cwd=tmp_path)
    assert again.returncode == 0 and "8 entries, 8 already in the table" in again.stdout.replace("\n", " ")

    out = run_facenas("hyperfd", "export", "runs/hyperfd/tiny", "--out", "tiny.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "tiny.csv", newline="") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == 8 and list(exported[0]) == [
        "dataset", "space", "configuration", "params", "seed", "val_ap50", "test_ap50", "train_seconds", "status",
        "error",
    ]  # fmt: skip
    assert {json.dumps(json.loads(r["params"]), sort_keys=True) for r in exported} == {r["key"] for r in table}
    missing = run_facenas("hyperfd", "export", "nowhere", "--out", "x.csv", cwd=tmp_path)
    assert missing.returncode == 2 and "holds no lookup table" in missing.stderr

    # HyperFD on the exported table: plain offline, masked online, B = 2 of the 4 configurations
    common = ["--table", "tiny.csv", "--table_config", str(TINY), "--warmup_steps", "20"]
    methods = "[random, best_on_source, hyperfd_stats]"
    out = run_facenas(
        "hyperfd", "evaluate", *common, "--source", "plain", "--methods", methods, "--runs", "2", "--budget", "2",
        "--out", "evaluation", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "evaluation" / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 3 * 2 and {r["dataset"] for r in runs} == {"masked"}
    assert all(25.0 <= float(r["rank"]) <= 100.0 and r["evaluated"] == "2" for r in runs)
    report = (tmp_path / "evaluation" / "evaluation.md").read_text()
    assert "| hyperfd_stats | " in report and "**Dataset sensitivity after warm-up**" in report
    sensitivity = json.loads((tmp_path / "evaluation" / "summary.json").read_text())["dataset_sensitivity"]
    assert set(sensitivity) == {"hyperfd_stats"} and -1.0 <= sensitivity["hyperfd_stats"] <= 1.0
    out = run_facenas("hyperfd", "train", *common, "--features", "label_stats", "--out", "ranker.pt", cwd=tmp_path)
    assert out.returncode == 0 and "2 datasets" in out.stdout, out.stderr[-3000:]
    bad = run_facenas("hyperfd", "evaluate", *common, "--methods", "[oracle]", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown method 'oracle'" in bad.stderr
    bad = run_facenas(
        "hyperfd", "evaluate", *common, "--source", "masked", "--offline", "[plain]", "--methods", "[best_on_source]",
        "--out", "bad", cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "best_on_source: source 'masked' is not an offline dataset" in bad.stderr

    # leave-one-family-out with a reading of HyperFD: each dataset (its own family here) online in turn;
    # best-on-source, whose source goes online in one split, is left out of the whole evaluation
    methods = (
        "[random, best_on_source, similar_portfolio, "
        "{name: alg1, method: hyperfd_stats, ratio: [0, 1, 1], warmup_steps: 5}]"
    )
    out = run_facenas(
        "hyperfd", "evaluate", *common, "--source", "plain", "--methods", methods, "--runs", "2", "--budget", "2",
        "--protocol", "leave_one_family_out", "--bootstrap_samples", "50", "--out", "lofo", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "lofo" / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert {r["dataset"] for r in runs} == {"plain/plain", "masked/masked"} and len(runs) == 3 * 2 * 2
    summary = json.loads((tmp_path / "lofo" / "summary.json").read_text())
    assert set(summary["bootstrap"]) == {"plain", "masked", "all"}
    assert summary["settings"]["readings"] == {"alg1": ["hyperfd_stats", {"ratio": [0, 1, 1], "warmup_steps": 5}]}
    report = (tmp_path / "lofo" / "evaluation.md").read_text()
    assert "similar_portfolio beats" in report or "similar_portfolio is" in report or "similar_portfolio does" in report
    assert "Not run: best_on_source, whose source 'plain' is online in plain" in report
    assert "nan" not in report and "best_on_source" not in {r["method"] for r in runs}


def test_protocol_splits_groups_and_families(tmp_path):
    from facenas.hyperfd.table.evaluation import dataset_families, online_groups, protocol_splits

    config = tmp_path / "table.yaml"
    config.write_text(
        "datasets:\n"
        "  - {name: a, data: {domain: {source: wider_train, families: [fog, tiny_crowd]}}}\n"
        "  - {name: b, data: {domain: {source: wider_train, families: [dark]}}}\n"
        "  - {name: c, data: {domain: {source: wider_val, families: [fog]}}}\n"
        "  - {name: d, data: {domain: {source: wider_val, families: [rain]}}}\n"
        "  - {name: e, data: {domain: {source: wider_val, families: []}}}\n"
        "  - {name: f, family: [label_noise], data: {synthetic_domains: [plain]}}\n"
        "  - {name: g, data: {synthetic_domains: [plain]}}\n"
    )
    names = list("abcdefg")
    families = dataset_families(config, names)
    assert families == {
        "a": ("fog", "tiny_crowd"), "b": ("low_light",), "c": ("fog",), "d": ("rain",), "e": ("photos",),
        "f": ("label_noise",), "g": ("g",),
    }  # fmt: skip
    assert online_groups(["c", "d"], ["a", "b"], families) == {"seen": ["c"], "held_out": ["d"], "all": ["c", "d"]}
    assert protocol_splits("online", names, ["a", "b"], families) == [("online", ["a", "b"], list("cdefg"))]
    lofo = {label: (off, on) for label, off, on in protocol_splits("leave_one_family_out", names, ["a"], families)}
    assert lofo["fog"] == (list("bdefg"), ["a", "c"]) and lofo["tiny_crowd"] == (list("bcdefg"), ["a"])
    assert protocol_splits("leave_one_offline_out", names, ["a", "b"], families) == [
        ("a", ["b"], ["a"]), ("b", ["a"], ["b"]),
    ]  # fmt: skip
    halves = protocol_splits("offline_halves", names, list("abcd"), families, seed=0, halves=3)
    assert [label for label, _, _ in halves] == ["half0", "half1", "half2"]
    for _, off, on in halves:
        assert len(off) == len(on) == 2 and sorted(off + on) == list("abcd")
    assert halves == protocol_splits("offline_halves", names, list("abcd"), families, seed=0, halves=3)
    with pytest.raises(ValueError, match="unknown protocol 'k_fold'"):
        protocol_splits("k_fold", names, ["a"], families)


def write_table(root, entries) -> None:
    """A lookup table written straight into stores: {(dataset, seed): [(config, val, test), ...]}."""
    for (dataset, seed), trials in entries.items():
        store = StudyStore(root / dataset / f"seed{seed}" / "study.sqlite")
        store.set_meta("settings", {"space": "hyperfd_hpo"})
        for i, (config, val, test) in enumerate(trials):
            trial = Trial(i, config, 1.0, seed)
            store.start(trial)
            if val is None:
                store.finish(trial, Result(Status.FAILED, {}, 1.0, "diverged"))
            else:
                store.finish(trial, Result(Status.SUCCESS, {"val/ap50": val, "test/ap50": test}, 2.0))


def test_report_numbers(tmp_path):
    from scipy.stats import spearmanr

    from facenas.hyperfd.table.report import analyse, write_report

    configs = [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    a_test = [0.50, 0.60, 0.70, 0.80, 0.90]
    b_test = [0.90, 0.70, 0.80, 0.50, 0.60]
    write_table(
        tmp_path,
        {
            ("a", 0): [(c, t + 0.01 * i, t) for i, (c, t) in enumerate(zip(configs, a_test))],
            ("a", 1): [(configs[0], 0.5, 0.52), (configs[1], 0.6, 0.56)],
            ("b", 0): [(c, t, t) for c, t in zip(configs, b_test)] + [({"lr": 0.1}, None, None)],
        },
    )
    result = analyse(tmp_path)
    a, b = result["datasets"]["a"], result["datasets"]["b"]
    assert a["entries"] == 5 and a["main_seed"] == 0 and b["failed"] == 1
    assert a["best"]["configuration"] == "lr=0.01" and b["best"]["configuration"] == "lr=0.0001"
    assert a["test_ap50"]["std"] == pytest.approx(float(np.std(a_test, ddof=1)))
    noise = np.mean([np.std([0.50, 0.52], ddof=1), np.std([0.60, 0.56], ddof=1)])
    assert a["seed_noise_std"] == pytest.approx(noise) and a["noise_configs"] == 2
    assert a["spread_over_noise"] == pytest.approx(np.std(a_test, ddof=1) / noise)
    q25, q75 = np.percentile(a_test, [25, 75])
    assert a["robust_spread_over_noise"] == pytest.approx((q75 - q25) / 1.349 / noise)
    assert a["val_test_spearman"] == pytest.approx(1.0)
    assert result["spearman"][0][1] == pytest.approx(spearmanr(a_test, b_test).statistic)
    assert result["summary"]["spread_above_twice_noise"] == ["a"]  # b has no noise measurement
    assert result["summary"]["robust_spread_above_twice_noise"] == ["a"]
    text, files = write_report(tmp_path)
    assert "| a | 5 | 0 |" in text and all(f.is_file() and f.stat().st_size > 0 for f in files)
    assert {f.name for f in files} >= {"ap_distribution.png", "val_vs_test.png", "spearman.png"}


def test_report_checks_whether_the_table_can_tell_methods_apart(tmp_path):
    """The pilot's go / no-go numbers on a table made to order: two optimiser x lr cells of two
    configurations each, a source whose top-2 portfolio is the target's worst pair."""
    from facenas.hyperfd.table.report import analyse, cell_share, portfolio_gap

    assert cell_share([1, 2, 3, 4], ["a", "a", "b", "b"]) == pytest.approx(0.8)  # between 4 of total 5
    assert math.isnan(cell_share([1, 2], ["a", "a"]))
    pools = {"src": {"x": (0.9, 0.9), "y": (0.8, 0.8), "z": (0.1, 0.1), "w": (0.0, 0.0)}}
    pools["t"] = {"x": (0.2, 0.2), "y": (0.3, 0.3), "z": (0.9, 0.9), "w": (0.8, 0.8)}
    assert portfolio_gap(pools, "src", 2) == {"t": pytest.approx(50.0)}  # y kept: 2 better of 4
    assert portfolio_gap(pools, "src", 4) == {"t": 0.0}
    with pytest.raises(ValueError, match="no dataset 'nope'"):
        portfolio_gap(pools, "nope", 2)

    configs = [
        {"optimizer": o, "lr": lr, "pos_iou": p} for o, lr in (("sgd", 1e-3), ("adam", 3e-4)) for p in (0.4, 0.6)
    ]
    aps = {"src": [0.9, 0.8, 0.3, 0.2], "t1": [0.1, 0.2, 0.9, 0.8], "t2": [0.9, 0.1, 0.8, 0.2]}
    layout = {(name, 0): [(c, v, v) for c, v in zip(configs, values)] for name, values in aps.items()}
    for name, values in aps.items():  # seed noise 0.01 / sqrt(2) on the first two configurations
        layout[(name, 1)] = [(c, v + 0.01, v + 0.01) for c, v in zip(configs[:2], values[:2])]
    write_table(tmp_path, layout)
    result = analyse(tmp_path, source="src", budget=2)
    c = result["checks"]
    assert c["disagree"] == {"pairs": 1, "below_half": 1, "pass": True}  # t1 vs t2: rho -0.2
    # t1 ranks 4 3 | 1 2 by cell (sgd | adam): share 0.8; t2 ranks 1 4 | 2 3: share 0
    assert c["cell_share"]["mean"] == pytest.approx(0.4) and c["cell_share"]["pass"]
    assert c["portfolio"]["gap"] == {"t1": pytest.approx(50.0), "t2": pytest.approx(0.0)}
    assert c["portfolio"]["mean"] == pytest.approx(25.0) and c["portfolio"]["pass"]
    q75 = np.percentile(aps["t1"], 75)
    noise = 0.01 / math.sqrt(2)
    assert c["top_resolved"]["top_gap_over_noise"]["t1"] == pytest.approx((0.9 - q75) / noise)
    assert c["top_resolved"]["pass"] and c["go"] is True
    assert "Verdict: **go**" in write_report_text(tmp_path, "src")


def write_report_text(root, source):
    from facenas.hyperfd.table.report import write_report

    return write_report(root, root / "report", source, 2)[0]


def test_augment_writes_subsets_a_benchmark_dataset_reads(tmp_path):
    """`facenas hyperfd augment` on the tiny YAML's `plain` dataset: subset split files whose
    images keep their splits, and a dataset entry naming one trains on exactly that subset."""
    from facenas.hyperfd.table.build import dataset_module

    (tmp_path / "configs").symlink_to(REPO / "configs")
    args = ["--table_config", str(TINY), "--dataset", "plain", "--out", "subsets", "--min_images", "3"]
    out = run_facenas("hyperfd", "augment", *args, "--n_clusters", "[2, 3]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "30 images (train 18 / val 3 / test 9)" in out.stdout
    index = json.loads((tmp_path / "subsets/index.json").read_text())
    assert index["subsets"] and index["report"]["kept"] == len(index["subsets"])
    split_file = tmp_path / "subsets" / index["subsets"][0]["file"]
    chosen = json.loads(split_file.read_text())
    assert chosen["subset"] is True
    benchmark = yaml.safe_load(TINY.read_text())
    sub_data = {"synthetic_domains": ["plain"], "split_file": str(split_file)}
    benchmark["datasets"].append({"name": "sub", "data": sub_data})
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(benchmark))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the YAML's base and the synthetic cache are relative
    try:
        parent, sub = dataset_module("b.yaml", "plain"), dataset_module("b.yaml", "sub")
        parent.setup("fit")
        sub.setup("fit")
    finally:
        os.chdir(cwd)
    original = {s.name: part for part, samples in parent.splits.items() for s in samples}
    got = {s.name: part for part, samples in sub.splits.items() for s in samples}
    assert got == chosen["assignments"] and all(original[n] == p for n, p in got.items())
    missing = run_facenas("hyperfd", "augment", *args[:2], "--dataset", "nope", "--out", "x", cwd=tmp_path)
    assert missing.returncode == 2 and "no dataset 'nope'" in missing.stderr


def test_objective_reduce_best_reads_the_kept_checkpoints_value(tmp_path):
    from facenas.search.runner import read_metrics

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,val/ap50,test/ap50,val/error\n0,0.30,,0.5\n1,nan,,0.2\n2,0.50,,0.4\n3,0.40,,0.3\n3,,0.45,\n")
    best = [
        Objective("val/ap50", "max", reduce="best"),
        Objective("test/ap50", "max"),
        Objective("val/error", reduce="best"),
    ]
    values, history = read_metrics(path, best)
    assert values == {"val/ap50": 0.50, "test/ap50": 0.45, "val/error": 0.2}
    assert [v for _, v in history][:1] == [0.30] and len(history) == 4
    last, _ = read_metrics(path, [Objective("val/ap50", "max")])
    assert last == {"val/ap50": 0.40}
    with pytest.raises(ValueError, match="reduce must be 'last' or 'best'"):
        Objective("val/ap50", "max", reduce="mean")
