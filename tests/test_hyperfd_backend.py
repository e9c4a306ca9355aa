"""The ``hyperfd`` search backend: the ranker picks for the study's own dataset, learns from the
results, saves a state with nothing per-image in it; and as SMAC's warm start."""

from __future__ import annotations

import numpy as np
import torch

from facenas.hyperfd.backend import load_state, save_state
from facenas.hyperfd.methods import HyperFD
from facenas.hyperfd.online import single_thread
from facenas.search.spaces import config_key
from facenas.search.study import Study, StudySettings
from facenas.search.trial import Objective, Result, Status, Trial

from .conftest import REPO
from .test_hyperfd_ranker import GRID, planted_table

SYNTHETIC_IMAGES = 30


def table_value(trial: Trial) -> Result:
    """A tabular objective: SGD with a large learning rate is best (family 0 of the planted table);
    the other knobs break ties, so that two picks always give the ranker a pair to learn from."""
    c = trial.config
    value = 0.5 + 0.3 * (c["optimizer"] == "sgd") + 0.05 * [3e-4, 1e-3, 3e-3].index(c["lr"])
    value += 0.01 * c["pos_iou"] + 0.001 * c["loc_weight"] + 0.0001 * c["neg_pos_ratio"] + 0.00001 * c["min_crop_ratio"]
    return Result(Status.SUCCESS, {"val/ap50": value})


def settings(tmp_path, name: str, domain: str, state, **backend) -> StudySettings:
    return StudySettings(
        name=name,
        space="hyperfd_hpo",
        objectives=[Objective("val/ap50", "max")],
        base=[str(REPO / "configs/detection/quickstart.yaml")],
        overrides={
            "data.init_args.synthetic_images": SYNTHETIC_IMAGES,
            "data.init_args.synthetic_domains": [domain],
            "data.init_args.synthetic_root": str(tmp_path / "synthetic"),
            "data.init_args.split_file": str(tmp_path / f"split-{domain}.json"),
        },
        backend={
            "class_path": "hyperfd",
            "init_args": {"state": str(state), "n_picks": 2, "update_steps": 5, **backend},
        },
        n_trials=2,
        seed=0,
        runs_dir=str(tmp_path / "runs" / name),
        storage=str(tmp_path / f"{name}.sqlite"),
        report=False,
    )


def warm_state(tmp_path):
    """A ranker warmed up on a planted table whose per-image features are label statistics (7-d)."""
    table = planted_table(4, 0, GRID)
    method = HyperFD(extractor="label_stats", warmup_steps=100, seed=0)
    with single_thread():
        method.warmup(list(table.values()), np.random.default_rng(0))
    return save_state(method.state(), tmp_path / "start.pt")


def test_backend_picks_learns_and_saves_a_private_state(tmp_path):
    start = warm_state(tmp_path)
    first = Study(settings(tmp_path, "first", "plain", start), objective=table_value, quiet=True).run()
    trials = first.trials()
    assert len(trials) == 2 and all(t.status == Status.SUCCESS for t in trials)
    after_one = tmp_path / "runs" / "first" / "ranker.pt"
    state = load_state(after_one)
    assert state["version"] == 1 and len(state["past"]) == 1
    assert set(state["past"][0]["records"]) == {config_key(t.trial.config) for t in trials}
    assert load_state(start)["version"] == 0  # the starting state is left as it was

    second = Study(settings(tmp_path, "second", "masked", after_one), objective=table_value, quiet=True).run()
    assert len(second.trials()) == 2
    state = load_state(tmp_path / "runs" / "second" / "ranker.pt")
    assert state["version"] == 2 and len(state["past"]) == 2
    # the updated ranker moved: its weights differ from the start's
    moved = load_state(start)["ranker"]
    assert any(not torch.equal(moved[k], v) for k, v in state["ranker"].items() if v.dtype.is_floating_point)

    train_images = round(SYNTHETIC_IMAGES * 0.6)

    def walk(value, where="state"):
        if isinstance(value, torch.Tensor):
            assert not {SYNTHETIC_IMAGES, train_images} & set(value.shape), (
                f"{where}: per-image shape {tuple(value.shape)}"
            )
            assert value.ndim <= 2, f"{where}: {value.ndim}-d tensor (pixels?)"
        elif isinstance(value, np.ndarray):
            raise AssertionError(f"{where}: a numpy array in the state")
        elif isinstance(value, dict):
            for k, v in value.items():
                assert "/" not in str(k) or str(k).startswith("{"), f"{where}: path-like key {k!r}"
                walk(v, f"{where}.{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str):
            assert "/" not in value and not value.endswith((".jpg", ".png")), f"{where}: {value!r}"

    walk(state)
    assert [p["meta"].shape for p in state["past"]] == [(64,), (64,)]


def test_backend_warm_starts_smac(tmp_path):
    start = warm_state(tmp_path)
    study = settings(tmp_path, "smac", "plain", start, then="smac")
    study.n_trials = 4
    trials = Study(study, objective=table_value, quiet=True).run().trials()
    assert len(trials) == 4
    # SMAC's initial design is exactly the ranker's two picks, then SMAC's own proposals follow
    ranked_only = settings(tmp_path, "ranked", "plain", start)
    picks = [t.trial.config for t in Study(ranked_only, objective=table_value, quiet=True).run().trials()]
    assert [config_key(t.trial.config) for t in trials[:2]] == [config_key(c) for c in picks]
    assert len({config_key(t.trial.config) for t in trials}) == 4


def test_shipped_rankers_load_score_the_pool_and_keep_their_options():
    from facenas.search.spaces import finite_configurations, load_space

    pool = finite_configurations(load_space("hyperfd_hpo"))
    assert len(pool) == 216
    # the options a state was trained with stay with it: a changed default does not change it
    options = {"hyperfd_cpu": ([5.0, 1.0, 1.0], 0.5), "real_photo": ([0.0, 1.0, 1.0], 0.0)}
    for name, (ratio, explore) in options.items():
        state = load_state(name)
        assert state["space"] == "hyperfd_hpo" and state["extractor"] == "detector"
        assert state["past"] == [] and state["version"] == 0  # trained on a table: no online task yet
        method = HyperFD.from_state(state)
        assert (list(method.ratio), method.explore) == (ratio, explore)
        width = int(state["ranker"]["dataset.mean"].shape[0])
        features = np.random.default_rng(0).normal(size=(40, width)).astype(np.float32)
        scores = method.scores(method.client_meta(features), pool)
        assert np.isfinite(scores).all() and len(set(np.round(scores, 5))) > 100
