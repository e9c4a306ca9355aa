"""HyperFD's ranker, its losses, the online protocol and the methods compared on it
(facenas/hyperfd/ranker.py, online.py, methods.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facenas.hyperfd.methods import (
    METHODS,
    BestOnSource,
    HyperFD,
    HyperSTAR,
    SCoT,
    SimilarPortfolio,
    TrAutoML,
    ZeroShotTransfer,
    create_method,
    dataset_sensitivity,
    method_specs,
    scot_incumbent,
)
from facenas.hyperfd.online import (
    BudgetExceeded,
    OnlineTask,
    RandomSearch,
    TaskData,
    bootstrap,
    evaluate,
    markdown,
    normalized_rank,
    random_rank_closed_form,
    run_online,
    single_thread,
    summarize_runs,
    verdicts,
)
from facenas.hyperfd.ranker import (
    ConfigEncoder,
    HPOEncoder,
    SynapticIntelligence,
    Transformations,
    preference_similarity,
    ranknet_loss,
    triplet_loss,
)
from facenas.search.spaces import config_key, finite_configurations, load_space, nas_config

GRID = finite_configurations(load_space("hyperfd_hpo"))
N_IMAGES = 37  # a count no other dimension of the ranker has


def planted_table(n_offline: int = 6, n_online: int = 6, configs: list | None = None, seed: int = 0):
    """Datasets of two families: family 0 prefers SGD and large learning rates, family 1 Adam and
    small ones; the family shows in the first per-image feature (+3 or -3)."""
    rng = np.random.default_rng(seed)
    configs = configs or GRID
    table = {}
    for i in range(n_offline + n_online):
        family = i % 2
        name = ("wider" if i == 0 else f"off{i}") if i < n_offline else f"on{i}"
        data = TaskData(name, {}, {}, {})
        for c in configs:
            key = config_key(c)
            match = (c["optimizer"] == "sgd") == (family == 0)
            lr = [3e-4, 1e-3, 3e-3].index(c["lr"])
            value = 0.5 + 0.3 * match + 0.05 * (lr if family == 0 else 2 - lr) + rng.normal(0, 0.02)
            data.configs[key], data.val[key], data.test[key] = c, value, value + rng.normal(0, 0.01)
        features = rng.normal(0, 1, size=(N_IMAGES, 7))
        features[:, 0] += 3.0 if family == 0 else -3.0
        data.features = {"label_stats": features}
        table[name] = data
    return table


# ------------------------------------------------------------------------- protocol and metric


def test_random_search_matches_the_closed_form():
    mean, std = random_rank_closed_form(216, 4)
    assert (round(mean, 2), round(std, 2)) == (20.09, 16.22)  # the supplementary's random rows
    rng = np.random.default_rng(0)
    values = rng.permutation(216).astype(float)  # distinct APs
    data = TaskData("d", {config_key(c): c for c in GRID}, {}, {})
    data.val = {config_key(c): v for c, v in zip(GRID, values)}
    data.test = dict(data.val)
    results = run_online(RandomSearch(), [], [data] * 3000, budget=4, seed=1)
    ranks = np.array([r["rank"] for r in results])
    assert all(r["evaluated"] == 4 for r in results)
    assert ranks.mean() == pytest.approx(mean, abs=4 * std / math.sqrt(len(ranks)))
    assert ranks.std() == pytest.approx(std, rel=0.05)


def test_normalized_rank_counts_strictly_higher_validation_ap():
    data = TaskData("d", {}, {"a": 0.9, "b": 0.8, "c": 0.8, "d": 0.1}, {})
    assert normalized_rank(data, "a") == 25.0
    assert normalized_rank(data, "b") == normalized_rank(data, "c") == 50.0
    assert normalized_rank(data, "d") == 100.0


def test_online_task_enforces_the_budget():
    table = planted_table(0, 1, GRID[:10])
    task = OnlineTask(next(iter(table.values())), budget=2)
    first = task.evaluate(task.pool[0])
    task.evaluate(task.pool[1])
    assert task.evaluate(task.pool[0]) == first  # asking again costs nothing
    with pytest.raises(BudgetExceeded):
        task.evaluate(task.pool[2])
    assert task.remaining == 0


# ------------------------------------------------------------------------- ranker pieces


def test_hpo_encoder_is_one_hot_per_parameter():
    encoder = HPOEncoder(load_space("hyperfd_hpo"))
    assert encoder.dim == 2 + 3 + 2 + 3 + 3 + 2
    codes = np.array([encoder.encode(c) for c in GRID])
    assert (codes.sum(1) == 6).all()
    assert len({tuple(c) for c in codes}) == 216
    with pytest.raises(ValueError, match="lr=0.5"):
        encoder.encode({**GRID[0], "lr": 0.5})


def test_config_encoders_of_the_three_spaces():
    small, large = nas_config("smallest"), nas_config("largest")
    nas = ConfigEncoder(load_space("hyperfd_nas")).eval()
    out = nas([small, large])
    assert out.shape == (2, 64) and not torch.allclose(out[0], out[1])
    joint = ConfigEncoder(load_space("hyperfd_joint")).eval()
    assert joint([{**GRID[0], **large}]).shape == (1, 128)
    assert ConfigEncoder(load_space("hyperfd_hpo"))(GRID[:3]).shape == (3, 64)
    # the flat encoding (SCoT's) of architectures: one-hot per parameter, inactive layers zero
    flat = HPOEncoder(load_space("hyperfd_nas"), architecture=True)
    big, tiny = np.array(flat.encode(large)), np.array(flat.encode(small))
    assert big.shape == tiny.shape and big.sum() == len(large) and tiny.sum() == len(small) < len(large)


def test_ranknet_loss_is_the_pairwise_logistic_loss():
    scores = torch.tensor([0.3, -1.0, 2.0])
    ap = torch.tensor([0.5, 0.9, 0.5])
    pairs = [(1, 0), (1, 2)]  # AP_i > AP_j; the tie (0, 2) is no pair
    direct = sum(math.log(1 + math.exp(-(scores[i] - scores[j]).item())) for i, j in pairs) / len(pairs)
    assert ranknet_loss(scores, ap).item() == pytest.approx(direct, rel=1e-6)
    assert ranknet_loss(scores, torch.ones(3)).item() == 0.0


def test_triplet_positive_and_negative_by_preference_similarity():
    up = {str(i): float(i) for i in range(6)}
    similar = {str(i): float(i) + (0.5 if i == 2 else 0.0) for i in range(6)}
    opposite = {str(i): -float(i) for i in range(6)}
    assert preference_similarity(up, opposite) == pytest.approx(-1.0)
    assert math.isnan(preference_similarity(up, {"0": 1.0, "1": 2.0}))  # fewer than 3 shared
    metas = torch.randn(3, 64)
    loss = triplet_loss(metas, [up, similar, opposite], margin=0.5)
    # anchors: up (pos similar, neg opposite), similar (pos up, neg opposite), opposite (pos and neg
    # equally dissimilar: skipped)
    expected = torch.nn.functional.triplet_margin_loss(metas[[0, 1]], metas[[1, 0]], metas[[2, 2]], margin=0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_synaptic_intelligence_bookkeeping_is_exact():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    si = SynapticIntelligence({"w": w}, damping=0.1)
    steps = [
        (torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.1])),
        (torch.tensor([1.0, 0.0]), torch.tensor([-0.1, 0.3])),
    ]
    omega = torch.zeros(2)
    start = w.detach().clone()
    for grad, move in steps:
        before = {"w": w.detach().clone()}
        with torch.no_grad():
            w += move
        si.step(before, {"w": grad})
        omega -= grad * move
    assert torch.allclose(si.omega["w"], omega)
    si.consolidate()
    expected = torch.clamp(omega / ((w.detach() - start) ** 2 + 0.1), min=0)
    assert torch.allclose(si.importance["w"], expected)
    assert torch.allclose(si.anchor["w"], w.detach()) and not si.omega["w"].any()
    with torch.no_grad():
        w += torch.tensor([1.0, 1.0])
    assert si.penalty().item() == pytest.approx((expected * 1.0).sum().item())
    w.grad = None
    si.add_penalty_grad(3.0)
    assert torch.allclose(w.grad, 2 * 3.0 * expected * torch.ones(2))


def test_transformation_starts_as_identity_and_learns_the_version_change():
    torch.manual_seed(0)
    z = Transformations(hidden=8)
    old = torch.randn(20, 8)
    z.create("1", old)
    x = torch.randn(8)
    assert torch.equal(z("1", x), x) and torch.equal(z("2", x), x)  # unknown version: current
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    new = old @ rotation.T  # the extractor changed: the same datasets now map elsewhere
    optimizer = torch.optim.Adam(z.parameters(), lr=1e-2)
    first = z.loss("1", new).item()
    for _ in range(300):
        optimizer.zero_grad()
        z.loss("1", new).backward()
        optimizer.step()
    assert z.loss("1", new).item() < 0.05 * first


# ------------------------------------------------------------------------- methods


def test_hyperfd_learns_a_planted_structure():
    table = planted_table()
    offline = [table[n] for n in table if not n.startswith("on")]
    online = [table[n] for n in table if n.startswith("on")]
    with single_thread():
        results = run_online(HyperFD(extractor="label_stats", warmup_steps=300, seed=0), offline, online, seed=0)
    ranks = [r["rank"] for r in results]
    assert np.mean(ranks) < 0.5 * random_rank_closed_form(216, 4)[0], ranks


def test_dataset_sensitivity_tells_a_ranker_that_reads_the_data_from_one_that_cannot():
    """Two families that prefer opposite configurations: the warmed-up ranker's score vectors
    disagree between them; the same datasets with one feature matrix for all score alike (1)."""
    import dataclasses

    table = planted_table(4, 2, GRID[::4])
    datasets = list(table.values())
    offline = [table[n] for n in table if not n.startswith("on")]
    method = HyperFD(extractor="label_stats", warmup_steps=300, seed=0)
    with single_thread():
        method.warmup(offline, np.random.default_rng(0))
    reads = dataset_sensitivity(method, datasets)
    same = [dataclasses.replace(d, features=dict(datasets[0].features)) for d in datasets]
    assert reads < 0.5 and dataset_sensitivity(method, same) == pytest.approx(1.0)
    assert math.isnan(dataset_sensitivity(method, datasets[:1]))


def test_every_method_runs_the_protocol_without_reading_the_target_table():
    configs = GRID[::4]  # 54 configurations
    table = planted_table(3, 2, configs)
    methods = {
        "random": lambda s: RandomSearch(),
        "best_on_source": lambda s: BestOnSource("wider"),
        "zero_shot": lambda s: ZeroShotTransfer(),
        "tr_automl": lambda s: TrAutoML(extractor="label_stats", seed=s),
        "hyperstar": lambda s: HyperSTAR(extractor="label_stats", warmup_steps=50, steps_per_task=10, seed=s),
        "scot": lambda s: SCoT(extractor="label_stats", max_gp_points=100, seed=s),
        "hyperfd": lambda s: HyperFD(extractor="label_stats", warmup_steps=50, steps_per_task=5, seed=s),
        "hyperfd_mse": lambda s: HyperFD(
            extractor="label_stats", loss="mse", warmup_steps=50, steps_per_task=5, seed=s
        ),
    }
    rows = evaluate(table, methods, offline=["wider", "off1", "off2"], runs=2, seed=0)
    assert len(rows) == len(methods) * 2 * 2
    assert {r["evaluated"] for r in rows} == {4}
    assert all(100 / len(configs) <= r["rank"] <= 100 for r in rows)
    summary = summarize_runs(rows)
    assert set(summary["average"]) == set(methods)
    assert len(summary["curves"]["hyperfd"]) == 2
    # the standard error is over runs: a method whose picks never change has none
    assert summary["average"]["best_on_source"]["rank_sem"] == 0
    assert summary["average"]["random"]["rank_sem"] > 0
    # best-on-source is deterministic: the same picks on a dataset whatever the run
    picks = {(r["dataset"], r["configuration"]) for r in rows if r["method"] == "best_on_source"}
    assert len(picks) == 2
    # the same seed gives the same rows
    again = evaluate(table, {"hyperfd": methods["hyperfd"]}, offline=["wider", "off1", "off2"], runs=2, seed=0)
    assert [r["rank"] for r in again] == [r["rank"] for r in rows if r["method"] == "hyperfd"]
    # one run has no standard error: n/a, never a number
    one = summarize_runs([r for r in rows if r.get("run", 0) == 0])
    assert math.isnan(one["average"]["random"]["rank_sem"])
    assert "random n/a (one run)" in markdown(one, {})


def test_zero_shot_normalises_ranks_per_task_and_leaves_unevaluated_configurations_out():
    """An offline table ranks 48 configurations, a past online task only the 4 it evaluated: on
    the per-task scale (rank / n) the online task's best, 30th of 48 offline, beats the offline
    best that the online task never evaluated (raw ranks with a middle rank for the unevaluated
    would pick the offline best: 1 + 2.5 against 30 + 1)."""
    rng = np.random.default_rng(0)
    configs = GRID[:48]
    keys = [config_key(c) for c in configs]
    pool = dict(zip(keys, configs))
    offline_val = {k: 1.0 - i / 100 for i, k in enumerate(keys)}  # key 0 best, key 29 30th
    method = ZeroShotTransfer()
    method.warmup([TaskData("wider", pool, offline_val, offline_val)], rng)
    online_val = {k: 0.0 for k in keys} | {keys[29]: 0.9, keys[40]: 0.5, keys[41]: 0.4, keys[42]: 0.3}
    past = OnlineTask(TaskData("on0", pool, online_val, online_val), budget=4)
    for i in (29, 40, 41, 42):
        past.evaluate(pool[keys[i]])
    method.update(past, rng)
    new = OnlineTask(TaskData("on1", pool, offline_val, offline_val), budget=2)
    method.select(new, rng)
    # then the offline best: the online task's best (0.25) is already held, the offline one improves
    assert list(new.evaluated) == [keys[29], keys[0]]


def test_scot_incumbent_is_the_targets_own_best():
    mu = np.array([0.1, 0.9, 0.3, 0.5])  # the surrogate over the candidates
    assert scot_incumbent(mu, [], []) == 0.9  # nothing evaluated: the best it predicts
    # candidates 2 and 3 evaluated, 2 observed better: its surrogate value, not the highest one
    assert scot_incumbent(mu, [2, 3], [0.8, 0.4]) == 0.3
    assert scot_incumbent(mu, [2, 3], [0.4, 0.8]) == 0.5


def test_create_method_passes_the_space_seed_and_warmup_to_every_method():
    """Each method gets exactly the evaluation's settings it takes (none of them the default) and
    the extractor its role names."""
    roles = {"features": "detector", "stats": "label_stats", "resnet": "timm:resnet18"}
    ranker = {"space": "hyperfd_nas", "seed": 7, "warmup_steps": 3}
    expected = {
        "random": {},
        "best_on_source": {"source": "celeba"},
        "tr_automl": {"seed": 7, "extractor": "detector"},
        "hyperstar": {**ranker, "extractor": "detector"},
        "scot": {"space": "hyperfd_nas", "seed": 7, "extractor": "label_stats"},
        "zero_shot": {},
        "hyperfd_resnet": {**ranker, "extractor": "timm:resnet18", "loss": "rank"},
        "hyperfd_stats": {**ranker, "extractor": "label_stats", "loss": "rank"},
        "hyperfd_mse": {**ranker, "extractor": "detector", "loss": "mse"},
        "hyperfd": {**ranker, "extractor": "detector", "loss": "rank"},
        "similar_portfolio": {"extractor": "detector"},
    }
    assert set(expected) == set(METHODS)  # a new method gets its row here
    settings = ("space", "seed", "warmup_steps", "source", "extractor", "loss")
    for name, want in expected.items():
        method = create_method(name, 7, roles, space="hyperfd_nas", source="celeba", warmup_steps=3)
        got = {key: getattr(method, key) for key in settings if key in vars(method)}
        assert got == want, name
    assert create_method("hyperstar", 7, roles, space="hyperfd_nas").space == "hyperfd_nas"


def test_method_readings_take_their_options_and_refuse_unknown_ones():
    roles = {"features": "detector", "stats": "label_stats", "resnet": "timm:resnet18"}
    specs = method_specs(
        ["random", {"name": "hyperfd_alg1", "method": "hyperfd", "ratio": [0, 1, 1], "si_weight": 0, "explore": 0}]
    )
    assert specs == {
        "random": ("random", {}),
        "hyperfd_alg1": ("hyperfd", {"ratio": [0, 1, 1], "si_weight": 0, "explore": 0}),
    }
    method = create_method("hyperfd", 3, roles, options=specs["hyperfd_alg1"][1])
    assert (method.ratio, method.si_weight, method.explore, method.extractor) == ((0.0, 1.0, 1.0), 0, 0, "detector")
    with pytest.raises(ValueError, match="'hyperfd_x' .*hyperfd.* has no option 'temperature'"):
        method_specs([{"name": "hyperfd_x", "method": "hyperfd", "temperature": 2}])
    with pytest.raises(ValueError, match="unknown method 'oracle'"):
        method_specs([{"name": "x", "method": "oracle"}])
    with pytest.raises(ValueError, match="given twice"):
        method_specs(["random", {"name": "random", "method": "zero_shot"}])


def test_similar_portfolio_weights_similar_datasets_and_learns_from_agreement():
    """On the planted two-family table the similarity weights favour the target's family, and
    the method beats random search; with equal weights and no adaptation it is ZeroShotTransfer."""
    table = planted_table(8, 6, GRID[::3])
    offline = [table[n] for n in table if not n.startswith("on")]
    online = [table[n] for n in table if n.startswith("on")]
    method = SimilarPortfolio(extractor="label_stats")
    method.warmup(offline, np.random.default_rng(0))
    target = online[0]
    weights = method.weights(method._meta(target.feature("label_stats")))
    same = [
        i for i, d in enumerate(offline) if d.feature("label_stats")[0, 0] * target.feature("label_stats")[0, 0] > 0
    ]
    other = [i for i in range(len(offline)) if i not in same]
    assert weights[same].min() > weights[other].max()
    ranks = [r["rank"] for r in run_online(SimilarPortfolio(extractor="label_stats"), offline, online, seed=0)]
    assert np.mean(ranks) < random_rank_closed_form(len(GRID[::3]), 4)[0] / 2
    plain = run_online(SimilarPortfolio(extractor="label_stats", bandwidth=None, adapt=0), offline, online, seed=0)
    zero = run_online(ZeroShotTransfer(), offline, online, seed=0)
    assert [r["configuration"] for r in plain] == [r["configuration"] for r in zero]
    method._last = None
    agreement = method._agreement({config_key(GRID[0]): 0.9, config_key(GRID[3]): 0.1})
    assert agreement.shape == (len(offline),) and set(np.round(agreement * 3).astype(int)) <= {1, 2}


def test_table_noise_draws_seed_entries_the_same_for_every_method():
    data = TaskData("d", {"a": {}, "b": {}}, {"a": 0.5, "b": 0.6}, {"a": 0.5, "b": 0.6}, repeats={"a": [(0.7, 0.8)]})
    draws = {data.with_seed_draw(np.random.default_rng(s)).val["a"] for s in range(20)}
    assert draws == {0.5, 0.7} and data.val["a"] == 0.5  # the original stays
    assert {data.with_seed_draw(np.random.default_rng(s)).val["b"] for s in range(5)} == {0.6}
    table = planted_table(3, 3, GRID[::6])
    for d in table.values():  # a repeat that reverses the best and worst configuration
        keys = sorted(d.val, key=d.val.get)
        d.repeats = {keys[0]: [(1.0, 1.0)], keys[-1]: [(0.0, 0.0)]}
    methods = {"random": lambda s: RandomSearch(), "zero_shot": lambda s: ZeroShotTransfer()}
    offline = ["wider", "off1", "off2"]
    quiet = evaluate(table, methods, offline=offline, runs=6, seed=0)
    noisy = evaluate(table, methods, offline=offline, runs=6, seed=0, table_noise=True)
    assert quiet != noisy
    zero = [r["rank"] for r in noisy if r["method"] == "zero_shot"]
    assert len(set(zero)) > 1  # a deterministic method varies with the table's draws


def test_bootstrap_pairs_methods_and_states_verdicts():
    rows = []
    for run in range(10):
        for d, base in (("x", 10.0), ("y", 30.0), ("z", 20.0)):
            rows.append({"method": "good", "run": run, "dataset": d, "rank": base})
            rows.append({"method": "bad", "run": run, "dataset": d, "rank": base + 5 + (run % 3)})
            rows.append({"method": "same", "run": run, "dataset": d, "rank": base + (1 if run % 2 else -1)})
    found = bootstrap(rows, {"all": ["x", "y", "z"], "one": ["x"]}, samples=500, seed=0)
    assert found["all"]["methods"]["good"]["mean"] == pytest.approx(20.0)
    assert found["one"]["methods"]["good"] == {"mean": 10.0, "se": 0.0, "lo": 10.0, "hi": 10.0}
    assert found["all"]["methods"]["good"]["se"] > 0  # the datasets vary
    bad = found["all"]["differences"]["good|bad"]
    assert bad["hi"] < 0 and bad["mean"] == pytest.approx(-5.9)  # 5 + mean of run % 3 over 10 runs
    text = "\n".join(verdicts(found["all"], "good", reference=25.0))
    assert "good beats bad" in text and "good is not resolved from same" in text
    assert "good does not beat random search's closed form" in text  # 20 with datasets 10..30
    assert "good beats random" in "\n".join(verdicts(found["one"], "good", reference=25.0))


def test_evaluation_journal_resumes_a_killed_evaluation(tmp_path):
    table = planted_table(3, 4, GRID[::6])
    methods = {"random": lambda s: RandomSearch(), "zero_shot": lambda s: ZeroShotTransfer()}
    offline = ["wider", "off1", "off2"]
    fresh = evaluate(table, methods, offline=offline, runs=3, seed=0)
    journal = tmp_path / "journal.jsonl"
    evaluate(table, methods, offline=offline, runs=1, seed=0, journal=journal)
    with open(journal, "a") as f:
        f.write('{"run": 1, "method": "rand')  # a write cut short by a kill
    seen = []
    resumed = evaluate(table, methods, offline=offline, runs=3, seed=0, journal=journal, progress=seen.append)
    assert seen[0].startswith("resuming") and "2 (run, method)" in seen[0]
    assert len([s for s in seen if s.startswith("run ")]) == 4  # runs 2 and 3 only
    assert resumed == fresh
    with pytest.raises(ValueError, match="other settings"):
        evaluate(table, methods, offline=offline, runs=3, seed=1, journal=journal)


def test_readings_share_one_warmup_with_the_same_rows_as_their_own():
    table = planted_table(3, 3, GRID[::6])
    offline = ["wider", "off1", "off2"]
    readings = {
        "table6": {},
        "alg1_top4": {"ratio": (0.0, 1.0, 1.0), "explore": 0.0},
        "no_si": {"si_weight": 0.0},
        "mse": {"loss": "mse"},  # another warm-up
    }
    methods = {
        n: (lambda s, o=o: HyperFD(extractor="label_stats", warmup_steps=30, steps_per_task=5, seed=s, **o))
        for n, o in readings.items()
    }
    shared = evaluate(table, methods, offline=offline, runs=2, seed=0)
    order = [r["dataset"] for r in shared if r["method"] == "table6" and r["run"] == 0]
    run_seed = int(np.random.SeedSequence([0, 0, 1]).generate_state(1)[0])
    warm: dict = {}
    for name, factory in methods.items():
        alone = run_online(factory(run_seed), [table[n] for n in offline], [table[n] for n in order], 4, run_seed)
        together = [r for r in shared if r["method"] == name and r["run"] == 0]
        assert [r | {"method": name} for r in alone] == [{k: v for k, v in r.items() if k != "run"} for r in together]
        run_online(factory(run_seed), [table[n] for n in offline], [table[n] for n in order], 4, run_seed, warm)
    assert len(warm) == 2  # the three readings that differ only online warmed up once
    assert HyperFD(loss="mse").warmup_key() != HyperFD().warmup_key() == HyperFD(explore=0.0).warmup_key()


def test_evaluation_in_worker_processes_equals_one_process(tmp_path):
    table = planted_table(3, 3, GRID[::6])
    for d in table.values():
        keys = sorted(d.val, key=d.val.get)
        d.repeats = {keys[0]: [(1.0, 1.0)]}
    methods = {
        "random": lambda s: RandomSearch(),
        "hyperfd": lambda s: HyperFD(extractor="label_stats", warmup_steps=20, steps_per_task=5, seed=s),
    }
    offline = ["wider", "off1", "off2"]
    one = evaluate(table, methods, offline=offline, runs=3, seed=0, table_noise=True)
    journal = tmp_path / "journal.jsonl"
    two = evaluate(table, methods, offline=offline, runs=3, seed=0, table_noise=True, journal=journal, workers=2)
    assert two == one
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 3 * 2  # the settings, then every (run, method) written by the workers
    resumed = evaluate(table, methods, offline=offline, runs=3, seed=0, table_noise=True, journal=journal, workers=2)
    assert resumed == one and len(journal.read_text().splitlines()) == len(lines)  # nothing run again
    with pytest.raises(ValueError, match="workers"):
        evaluate(table, methods, offline=offline, runs=1, workers=0)


def test_hyperfd_state_keeps_no_per_image_data():
    table = planted_table(2, 2, GRID[::6])
    offline = [table[n] for n in table if not n.startswith("on")]
    online = [table[n] for n in table if n.startswith("on")]
    method = HyperFD(extractor="label_stats", warmup_steps=20, steps_per_task=5, seed=0)
    run_online(method, offline, online, seed=0)
    state = method.state()
    assert len(state["past"]) == 2 and state["version"] == 2

    def walk(value, where="state"):
        if isinstance(value, torch.Tensor | np.ndarray):
            assert N_IMAGES not in value.shape, f"{where} has a per-image dimension {tuple(value.shape)}"
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str):
            assert "/" not in value or value.startswith("{"), f"{where} holds a path-like string {value!r}"

    walk(state)
    assert all(p["meta"].shape == (64,) for p in state["past"])


def test_tr_automl_joins_the_nearest_group_or_starts_one_when_the_test_rejects_it():
    table = planted_table(8, 2, GRID[::6])
    offline = [table[n] for n in table if not n.startswith("on")]
    method = TrAutoML(extractor="label_stats", groups=2, seed=0)
    method.warmup(offline, np.random.default_rng(0))
    families = {tuple(sorted(offline[i].feature("label_stats")[:, 0].mean() > 0 for i in m)) for m in method.members}
    assert families == {(False,) * 4, (True,) * 4}  # K-Means finds the two planted families
    near = method.known[method.members[0][0]][0]
    assert method.assign(near) == 0
    far = near + 50.0  # far outside every group
    assert method.assign(far) is None
    online = [table[n] for n in table if n.startswith("on")]
    task = OnlineTask(online[0], 4)
    method.select(task, np.random.default_rng(0))
    method._last = (far, None)
    method.update(task, np.random.default_rng(0))
    assert len(method.members) == 3 and method.members[-1] == [len(method.known) - 1]


def test_hyperstar_draws_a_batch_of_images_for_each_task_representation():
    method = HyperSTAR(extractor="label_stats", image_batch=8, seed=0)
    features = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)
    drawn = method._images(features, np.random.default_rng(0))
    assert drawn.shape == (8, 3) and len(set(drawn[:, 0].tolist())) == 8
    assert HyperSTAR(image_batch=None)._images(features, np.random.default_rng(0)) is features
    with pytest.raises(ValueError, match="image_batch must be >= 1"):
        HyperSTAR(image_batch=0)
