"""Identification error and FR-NAS fairness metrics: chunked core against the full distance
matrix, hand-worked cases, group formulas, and the torchmetrics Metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facenas.callbacks import (
    IdentificationFairness,
    evaluate_fairness,
    fairness_metrics,
    identification_ranks,
)
from facenas.callbacks.fairness import ProbeRanks


def brute_force_ranks(emb: np.ndarray, ids: np.ndarray):
    """FR-NAS's definition on the full N x N Euclidean distance matrix."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    probes, ranks, ranks_id = [], [], []
    for i in range(len(ids)):
        same = ids == ids[i]
        same[i] = False
        if not same.any():
            continue
        d_same = dist[i][same].min()
        closer = (ids != ids[i]) & (dist[i] < d_same)
        probes.append(i)
        ranks.append(int(closer.sum()))
        ranks_id.append(len(set(ids[closer].tolist())))
    return probes, ranks, ranks_id


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1, 37, 10_000_000])
def test_chunked_ranks_match_the_full_matrix(seed, chunk):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 150)), int(rng.integers(3, 25))
    ids = rng.integers(0, k, n)
    emb = rng.normal(size=(n, 8)) + rng.normal(size=(k, 8))[ids] * 1.5
    got = identification_ranks(torch.tensor(emb), torch.tensor(ids), chunk_elements=chunk)
    probes, ranks, ranks_id = brute_force_ranks(emb, ids)
    assert got.index.tolist() == probes
    assert got.rank.tolist() == ranks
    assert got.rank_by_identity.tolist() == ranks_id


def test_hand_worked_ranks():
    # identity 0 at angles 0 and 40 degrees, identity 1 at 10 and 15, identity 2 alone at 30
    angles = np.deg2rad([0, 40, 10, 15, 30])
    emb = torch.tensor(np.c_[np.cos(angles), np.sin(angles)])
    ids = torch.tensor([0, 0, 1, 1, 2])
    r = identification_ranks(emb, ids)
    assert r.index.tolist() == [0, 1, 2, 3]  # identity 2 has one image: not a probe
    # image 0 (d_same = 40 deg): 10, 15, 30 closer -> rank 3, identities {1, 2}
    # image 1 (40): 30, 15, 10 closer than 40 -> 3, {1, 2}; image 2 (10): nearest other is 15 (5 deg) -> 0
    assert r.rank.tolist() == [3, 3, 0, 0]
    assert r.rank_by_identity.tolist() == [2, 2, 0, 0]


def test_group_metrics_follow_the_frnas_formulas():
    ranks = ProbeRanks(
        index=torch.arange(6), rank=torch.tensor([0, 2, 0, 0, 4, 1]), rank_by_identity=torch.tensor([0, 1, 0, 0, 2, 1])
    )
    groups = torch.tensor([0, 0, 0, 1, 1, 1])  # female: acc 2/3, rank 2/3; male: acc 1/3, rank 5/3
    res = fairness_metrics(ranks, groups, ["female", "male"], reference_group="female")
    f, m = res.groups["female"], res.groups["male"]
    assert (f.accuracy, m.accuracy, f.n, m.n) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3, 3)
    assert res.error == pytest.approx(0.5)
    assert res.disparity == pytest.approx(1 / 3)
    assert res.ratio == pytest.approx(abs(1 - (1 / 3) / (2 / 3)))
    assert res.rank_disparity == pytest.approx(1.0)
    assert res.rank_ratio == pytest.approx(abs(1 - (5 / 3) / (2 / 3)))
    assert res.error_ratio == pytest.approx(abs(1 - (2 / 3) / (1 / 3)))
    assert m.rank_by_identity == pytest.approx(1.0)
    # without a reference group: the worst ordered pair
    both = fairness_metrics(ranks, groups, ["female", "male"])
    assert both.ratio == pytest.approx(1.0)  # |1 - (2/3)/(1/3)|
    assert both.rank_ratio == pytest.approx(abs(1 - (5 / 3) / (2 / 3)))


def test_more_than_two_groups_take_the_maximum_over_pairs():
    ranks = ProbeRanks(
        index=torch.arange(6), rank=torch.tensor([0, 0, 1, 0, 3, 3]), rank_by_identity=torch.tensor([0, 0, 1, 0, 1, 1])
    )
    res = fairness_metrics(ranks, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"])
    assert res.rank_disparity == pytest.approx(3.0)  # c (3) vs a (0)
    assert res.disparity == pytest.approx(1.0)  # a (1) vs c (0)
    assert res.ratio == math.inf  # |1 - 1/0|: c has accuracy 0
    assert res.error_ratio == math.inf  # |1 - 0.5/0|: a has error 0
    assert res.groups["b"].rank == pytest.approx(0.5) and res.groups["c"].rank_by_identity == pytest.approx(1.0)


def test_probes_without_a_group_count_overall_only():
    ranks = ProbeRanks(index=torch.arange(3), rank=torch.tensor([1, 0, 0]), rank_by_identity=torch.tensor([1, 0, 0]))
    res = fairness_metrics(ranks, torch.tensor([-1, 0, 1]), ["f", "m"])
    assert res.probes == 3 and res.error == pytest.approx(1 / 3)
    assert sum(g.n for g in res.groups.values()) == 2


def test_metric_accumulates_batches_like_one_evaluation():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 12, 90)
    emb = torch.tensor(rng.normal(size=(90, 16)) + rng.normal(size=(12, 16))[ids], dtype=torch.float32)
    groups = torch.tensor(ids % 2)
    metric = IdentificationFairness(group_names=["female", "male"], reference_group="female")
    for lo in range(0, 90, 25):
        metric.update(emb[lo : lo + 25], torch.tensor(ids[lo : lo + 25]), groups[lo : lo + 25])
    out = metric.compute()
    want = evaluate_fairness(emb, torch.tensor(ids), groups, ["female", "male"], "female")
    for key in ("error", "rank_disparity", "disparity", "ratio", "rank_ratio", "error_ratio"):
        assert out[key].item() == pytest.approx(getattr(want, key), rel=1e-6)
    assert out["n_female"].item() == want.groups["female"].n


# --- FR-NAS's released code (src/utils/fairness_utils.py, src/search/dpn_objective.py,
# analysis/analysis.py), transcribed: a probe's row of the distance matrix sorted by topk, walked
# until the first image of its identity; -1 when there is none (a singleton) ---


def frnas_ranks(emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, 2): rank by image and rank by identity of every image, as FR-NAS's ``predictions``."""
    feats = torch.tensor(emb)
    feats = feats / torch.norm(feats, 2, 1, True)
    dist = torch.cdist(feats, feats)
    order = torch.topk(dist, dim=1, k=len(ids), largest=False)[1]

    def process_row(row):
        base = ids[row[0]]
        seen = set()
        for n_img in range(1, len(row)):
            seen.add(ids[row[n_img]])
            if ids[row[n_img]] == base:
                return n_img - 1, len(seen) - 1
        return -1, -1

    return np.array([process_row(row.tolist()) for row in order])


def frnas_group_metrics(rank: np.ndarray, gender: np.ndarray) -> dict[str, float]:
    """FR-NAS's analysis functions on one rank column (male against female)."""

    def per_group(values):
        return {g: values[gender == g].sum() / (gender == g).sum() for g in ("female", "male")}

    mean_rank, acc, err = per_group(rank), per_group(rank == 0), per_group(rank != 0)
    return {
        "rank_female": mean_rank["female"],
        "rank_male": mean_rank["male"],
        "rank_disparity": abs(mean_rank["male"] - mean_rank["female"]),
        "rank_ratio": np.abs(1 - mean_rank["male"] / mean_rank["female"]),
        "disparity": abs(acc["male"] - acc["female"]),
        "ratio": np.abs(1 - acc["male"] / acc["female"]),
        "error_ratio": np.abs(1 - err["male"] / err["female"]),
        "error": 1 - (rank == 0).sum() / len(rank),
    }


def random_identities(seed: int):
    """Several identities of 1 to 6 images (some singletons), gender by identity, noisier female."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 7, int(rng.integers(8, 20)))
    ids = np.repeat(np.arange(len(counts)), counts)
    female = rng.random(len(counts)) < 0.5
    female[:2] = [True, False]  # both groups present
    noise = np.where(female[ids], 1.3, 0.8)[:, None]
    emb = rng.normal(size=(len(counts), 8))[ids] + noise * rng.normal(size=(len(ids), 8))
    return emb, ids, np.where(female[ids], "female", "male")


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("singletons", ["skip", "error"])
def test_ranks_and_metrics_equal_frnas_code(seed, singletons):
    emb, ids, gender = random_identities(seed)
    theirs = frnas_ranks(emb, ids)
    keep = np.ones(len(ids), bool) if singletons == "error" else theirs[:, 0] >= 0  # skip: drop their -1 rows
    res = evaluate_fairness(
        torch.tensor(emb),
        torch.tensor(ids),
        torch.tensor((gender == "male").astype(int)),
        ["female", "male"],
        "female",
        singletons=singletons,
    )
    ranks = identification_ranks(torch.tensor(emb), torch.tensor(ids), singletons=singletons)
    assert ranks.index.tolist() == np.flatnonzero(keep).tolist()
    assert ranks.rank.tolist() == theirs[keep, 0].tolist()
    assert ranks.rank_by_identity.tolist() == theirs[keep, 1].tolist()
    assert res.singletons == int((theirs[:, 0] < 0).sum()) and res.singleton_rule == singletons
    by_image = frnas_group_metrics(theirs[keep, 0], gender[keep])
    by_id = frnas_group_metrics(theirs[keep, 1], gender[keep])  # FR-NAS's objective and analysis
    f, m = res.groups["female"], res.groups["male"]
    # exact: the same integers, summed and divided the same way
    assert (f.rank, m.rank) == (by_image["rank_female"], by_image["rank_male"])
    assert (f.rank_by_identity, m.rank_by_identity) == (by_id["rank_female"], by_id["rank_male"])
    assert res.rank_disparity == by_image["rank_disparity"]
    assert res.rank_ratio == by_image["rank_ratio"]
    assert res.rank_disparity_id == by_id["rank_disparity"]
    assert res.rank_ratio_id == by_id["rank_ratio"]
    for key in ("disparity", "ratio", "error_ratio"):  # the same from either rank (both 0 together)
        assert getattr(res, key) == by_image[key] == by_id[key], key
    assert res.error == pytest.approx(by_id["error"], abs=1e-15)


def test_image_rank_and_identity_rank_differ():
    # female identity A at 0 and 40 degrees; male identity B three times in between (10, 15, 20)
    angles = np.deg2rad([0, 40, 10, 15, 20])
    emb = torch.tensor(np.c_[np.cos(angles), np.sin(angles)])
    ids = torch.tensor([0, 0, 1, 1, 1])
    r = identification_ranks(emb, ids)
    assert r.rank.tolist() == [3, 3, 0, 0, 0]  # three images closer than the mate ...
    assert r.rank_by_identity.tolist() == [1, 1, 0, 0, 0]  # ... of one identity
    assert frnas_ranks(emb.numpy(), ids.numpy()).tolist() == [[3, 1], [3, 1], [0, 0], [0, 0], [0, 0]]
    res = fairness_metrics(r, torch.tensor([0, 0, 1, 1, 1]), ["female", "male"], "female")
    assert (res.rank_disparity, res.rank_disparity_id) == (3.0, 1.0)
    assert (res.rank_ratio, res.rank_ratio_id) == (1.0, 1.0)  # |1 - 0/3|, |1 - 0/1|
    assert res.rank == pytest.approx(6 / 5) and res.rank_by_identity == pytest.approx(2 / 5)


def test_singletons_skipped_or_counted_as_errors():
    # the previous case plus a male singleton C at 90 degrees
    angles = np.deg2rad([0, 40, 10, 15, 20, 90])
    emb = torch.tensor(np.c_[np.cos(angles), np.sin(angles)])
    ids, groups = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 1])
    skip = evaluate_fairness(emb, ids, groups, ["female", "male"], "female")
    err = evaluate_fairness(emb, ids, groups, ["female", "male"], "female", singletons="error")
    assert (skip.probes, skip.singletons, skip.singleton_rule) == (5, 1, "skip")
    assert (err.probes, err.singletons, err.singleton_rule) == (6, 1, "error")
    assert skip.error == pytest.approx(2 / 5) and err.error == pytest.approx(3 / 6)
    assert skip.groups["male"].error == 0.0 and err.groups["male"].error == pytest.approx(1 / 4)
    # FR-NAS's -1 enters the male means: (0 + 0 + 0 - 1) / 4
    assert err.groups["male"].rank == err.groups["male"].rank_by_identity == pytest.approx(-0.25)
    assert err.rank_disparity == pytest.approx(3.25) and err.rank_disparity_id == pytest.approx(1.25)
    assert identification_ranks(emb, ids, singletons="error").rank.tolist() == [3, 3, 0, 0, 0, -1]
    assert err.groups["female"] == skip.groups["female"]
    with pytest.raises(ValueError, match="singletons"):
        identification_ranks(emb, ids, singletons="drop")


def test_metric_and_callback_log_both_rank_disparities():
    import lightning.pytorch as pl

    from facenas.callbacks import FairnessMetrics

    emb, ids, gender = random_identities(5)
    emb, ids, groups = torch.tensor(emb, dtype=torch.float32), torch.tensor(ids), torch.tensor(gender == "male").long()
    want = evaluate_fairness(emb, ids, groups, ["female", "male"], "female", singletons="error")
    metric = IdentificationFairness(group_names=["female", "male"], reference_group="female", singletons="error")
    metric.update(emb, ids, groups)
    out = metric.compute()
    assert out["singletons"].item() == want.singletons > 0 and "singleton_rule" not in out

    class Embeddings(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def validation_step(self, batch, batch_idx):
            e, i, g = batch
            return {"embeddings": e, "identities": i, "groups": g}

    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(emb, ids, groups), batch_size=16)
    callback = FairnessMetrics(group_names=["female", "male"], reference_group="female", singletons="error")
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], accelerator="cpu"
    )
    trainer.validate(Embeddings(), dataloaders=batches, verbose=False)
    logged = trainer.callback_metrics
    for key in ("rank_disparity", "rank_ratio", "rank_disparity_id", "rank_ratio_id", "error", "singletons"):
        assert out[key].item() == pytest.approx(getattr(want, key), rel=1e-6), key
        assert logged[f"val/{key}"].item() == pytest.approx(getattr(want, key), rel=1e-6), key
