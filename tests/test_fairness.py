"""Identification error and FR-NAS fairness metrics: chunked core against the full distance
matrix, hand-worked cases, group formulas, and the torchmetrics Metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from callbacks import (
    IdentificationFairness,
    evaluate_fairness,
    fairness_metrics,
    identification_ranks,
)
from callbacks.fairness import ProbeRanks


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
