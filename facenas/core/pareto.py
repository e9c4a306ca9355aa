"""Multi-objective tools on cost arrays (N, M), every objective minimised: non-dominated
sorting, crowding distance, Pareto masks and hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def non_dominated_sort(costs: np.ndarray) -> np.ndarray:
    """Front index of every point (0 = Pareto front) for costs (N, M) to minimise."""
    n = len(costs)
    rank = np.full(n, -1)
    remaining = np.arange(n)
    front = 0
    while len(remaining):
        c = costs[remaining]
        dominated = ((c[:, None, :] >= c[None, :, :]).all(-1) & (c[:, None, :] > c[None, :, :]).any(-1)).any(axis=1)
        rank[remaining[~dominated]] = front
        remaining = remaining[dominated]
        front += 1
    return rank


def crowding_distance(costs: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance within one front (larger = more isolated)."""
    n, m = costs.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(costs[:, j], kind="stable")
        span = costs[order[-1], j] - costs[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (costs[order[2:], j] - costs[order[:-2], j]) / span
    return distance


def ranking(costs: np.ndarray) -> np.ndarray:
    """Indices from best to worst: by front, then by crowding distance (descending)."""
    fronts = non_dominated_sort(costs)
    crowd = np.zeros(len(costs))
    for f in np.unique(fronts):
        members = np.flatnonzero(fronts == f)
        crowd[members] = crowding_distance(costs[members])
    return np.lexsort((-crowd, fronts))


def pareto_mask(costs: np.ndarray) -> np.ndarray:
    """Which rows of costs (N, M) are not dominated by another row."""
    if len(costs) == 0:
        return np.zeros(0, dtype=bool)
    return non_dominated_sort(costs) == 0


def hypervolume(costs: np.ndarray, reference: Sequence[float]) -> float:
    """Volume dominated by the points and bounded by ``reference``.

    Exact, by slicing along the last objective (fine for the few objectives and hundreds of
    points of a study; points not strictly better than the reference add nothing).
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(costs, dtype=float).reshape(-1, len(ref))
    pts = pts[np.all(np.isfinite(pts), axis=1) & np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    if pts.shape[1] == 2:
        order = np.argsort(pts[:, 0])
        x, y = pts[order, 0], pts[order, 1]
        widths = np.diff(np.append(x, ref[0]))
        return float(np.sum(widths * (ref[1] - np.minimum.accumulate(y))))
    order = np.argsort(pts[:, -1])
    pts = pts[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        if upper > pts[i, -1]:
            volume += hypervolume(pts[: i + 1, :-1], ref[:-1]) * (upper - pts[i, -1])
    return volume


def hypervolume_history(costs: np.ndarray, reference: Sequence[float]) -> list[float]:
    """Hypervolume after each of the first 1, 2, ..., N evaluations."""
    return [hypervolume(costs[: k + 1], reference) for k in range(len(costs))]


def reference_point(costs: np.ndarray) -> list[float]:
    """A default reference: each objective's worst finite cost plus 10% of its range."""
    finite = np.where(np.isfinite(costs), costs, np.nan)
    worst, best = np.nanmax(finite, axis=0), np.nanmin(finite, axis=0)
    return [float(w + 0.1 * max(w - b, 1e-12)) for w, b in zip(worst, best)]
