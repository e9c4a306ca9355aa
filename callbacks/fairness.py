"""Face-identification error and fairness (FR-NAS definitions): the functional core (pure torch).

The torchmetrics wrapper is :class:`callbacks.metrics.IdentificationFairness`.

* Embeddings are L2-normalised; distance is Euclidean. A probe counts only if its identity has
  another image in the set. ``d_same`` is the distance to the nearest other image of the same
  identity; ``rank`` is the number of images of other identities strictly closer than ``d_same``;
  ``rank_by_identity`` the number of distinct other identities with an image strictly closer.
  ``error = rank > 0``.
* Per group: accuracy, error, mean rank, mean rank_by_identity, n (probes). Between a group ``a``
  and a reference: disparity ``|acc_a - acc_ref|``, ratio ``|1 - acc_a / acc_ref|``,
  rank_disparity ``|rank_a - rank_ref|``, rank_ratio ``|1 - rank_a / rank_ref|``, error_ratio
  ``|1 - err_a / err_ref|``. With a reference group the pairs are (every other group, reference)
  (FR-NAS: reference = female); without one, or with more than two groups and no reference,
  each metric is the maximum over all ordered pairs.

The N x N distance matrix is never materialised: probes are processed in chunks of rows against
all embeddings (on the embeddings' device). For unit vectors ``|x - y|^2 = 2 - 2 x.y``, so
"strictly closer" is "strictly larger cosine similarity", which a matrix product gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# similarity-matrix elements per chunk: 8M (32 MB float32 + 8 MB bool + 32 MB int32 buffers)
_CHUNK_ELEMENTS = 8_000_000


@dataclass
class ProbeRanks:
    """Per-probe results: ``index`` (P,) positions in the input, ``rank`` and ``rank_by_identity`` (P,)."""

    index: Tensor
    rank: Tensor
    rank_by_identity: Tensor


def identification_ranks(
    embeddings: Tensor, identities: Tensor, *, chunk_elements: int = _CHUNK_ELEMENTS, progress: bool = False
) -> ProbeRanks:
    """Rank of every probe (an image whose identity has another image in the set).

    Args:
        embeddings: (N, D) float; normalised here.
        identities: (N,) int64 identity labels.
        progress: show a progress bar over the chunks (command-line use).

    Returns:
        :class:`ProbeRanks` for the P probes, in input order.
    """
    emb = torch.nn.functional.normalize(embeddings.float(), dim=1)
    ids = identities.reshape(-1).to(emb.device).long()
    n = len(ids)
    # identities as contiguous column blocks: block k holds columns [start[k], start[k] + count[k])
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    col_order = torch.sort(inverse, stable=True).indices
    emb_sorted = emb[col_order]
    starts = torch.cumsum(counts, 0) - counts
    ends = starts + counts - 1
    column_of = _inverse_permutation(col_order)
    probes = torch.nonzero(counts[inverse] > 1).reshape(-1)
    max_count = int(counts.max().item()) if n else 0
    rank = torch.zeros(len(probes), dtype=torch.long, device=emb.device)
    rank_id = torch.zeros(len(probes), dtype=torch.long, device=emb.device)
    rows = max(1, min(len(probes), chunk_elements // max(n, 1)))
    # chunk buffers allocated once and reused: fresh multi-MB tensors per chunk fragment the
    # CPU allocator's per-thread arenas and grow the peak memory with every chunk
    sim_buf = emb.new_empty(rows, n)
    closer_buf = torch.empty(rows, n, dtype=torch.bool, device=emb.device)
    prefix_buf = torch.empty(rows, n, dtype=torch.int32, device=emb.device)
    emb_sorted_t = emb_sorted.T.contiguous()
    offsets = torch.arange(max_count, device=emb.device)
    chunks = range(0, len(probes), rows)
    if progress:
        from core.progress import track

        chunks = track(chunks, "ranking probes")
    for lo in chunks:
        idx = probes[lo : lo + rows]
        b = len(idx)
        sim = torch.matmul(emb[idx], emb_sorted_t, out=sim_buf[:b])  # (b, N)
        probe_id = inverse[idx]
        sim[torch.arange(b, device=sim.device), column_of[idx]] = -math.inf  # not the probe itself
        # nearest other image of the same identity: gather its block (padded to the largest block)
        span = starts[probe_id][:, None] + offsets[None, :]
        valid = span <= ends[probe_id][:, None]
        s_same = sim.gather(1, span.clamp(max=n - 1)).masked_fill_(~valid, -math.inf).max(dim=1).values
        closer = torch.gt(sim, s_same[:, None], out=closer_buf[:b])  # only other identities can be
        rank[lo : lo + b] = closer.sum(dim=1)
        # distinct identities with a closer image: closer-counts per block via a prefix sum
        prefix = torch.cumsum(closer, dim=1, dtype=torch.int32, out=prefix_buf[:b])
        per_block = prefix[:, ends] - torch.where(starts > 0, prefix[:, (starts - 1).clamp(min=0)], 0)
        rank_id[lo : lo + b] = (per_block > 0).sum(dim=1)
    return ProbeRanks(index=probes, rank=rank, rank_by_identity=rank_id)


def _inverse_permutation(perm: Tensor) -> Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


@dataclass
class GroupStats:
    """Identification results of one group."""

    accuracy: float
    error: float
    rank: float
    rank_by_identity: float
    n: int


@dataclass
class FairnessResult:
    """Overall error and the five FR-NAS fairness metrics, with per-group statistics."""

    probes: int
    error: float
    rank: float
    disparity: float
    ratio: float
    rank_disparity: float
    rank_ratio: float
    error_ratio: float
    groups: dict[str, GroupStats] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {
            k: getattr(self, k)
            for k in ("probes", "error", "rank", "disparity", "ratio", "rank_disparity", "rank_ratio", "error_ratio")
        }
        out["accuracy"] = 1.0 - self.error if self.probes else math.nan
        out["groups"] = {g: vars(s).copy() for g, s in self.groups.items()}
        return out


def _relative(a: float, ref: float) -> float:
    """``|1 - a / ref|``; 0 when both are 0, inf when only ``ref`` is."""
    if ref == 0:
        return 0.0 if a == 0 else math.inf
    return abs(1.0 - a / ref)


def fairness_metrics(
    ranks: ProbeRanks, groups: Tensor, group_names: Sequence[str] | None = None, reference_group: str | None = None
) -> FairnessResult:
    """Summarise probe ranks overall and per group.

    Args:
        ranks: output of :func:`identification_ranks`.
        groups: (N,) int64 group index of every image (negative: no group), same order as the
            embeddings given to :func:`identification_ranks`.
        group_names: name of each group index (default ``"0"``, ``"1"``, ...).
        reference_group: compare every other group with this one; None: maximum over all
            ordered pairs.
    """
    groups = groups.reshape(-1).to(ranks.index.device).long()
    probe_groups = groups[ranks.index]
    rank = ranks.rank.double()
    error = (ranks.rank > 0).double()
    rank_id = ranks.rank_by_identity.double()
    present = sorted({int(g) for g in probe_groups.tolist() if g >= 0})

    def name(g: int) -> str:
        return group_names[g] if group_names is not None and g < len(group_names) else str(g)

    stats: dict[str, GroupStats] = {}
    for g in present:
        m = probe_groups == g
        err = error[m].mean().item()
        stats[name(g)] = GroupStats(
            accuracy=1.0 - err,
            error=err,
            rank=rank[m].mean().item(),
            rank_by_identity=rank_id[m].mean().item(),
            n=int(m.sum().item()),
        )
    names = list(stats)
    if reference_group is not None and reference_group in stats:
        pairs = [(a, reference_group) for a in names if a != reference_group]
    else:
        pairs = [(a, b) for a in names for b in names if a != b]

    def worst(fn) -> float:
        return max((fn(stats[a], stats[b]) for a, b in pairs), default=0.0)

    total = len(ranks.index)
    return FairnessResult(
        probes=total,
        error=error.mean().item() if total else math.nan,
        rank=rank.mean().item() if total else math.nan,
        disparity=worst(lambda a, b: abs(a.accuracy - b.accuracy)),
        ratio=worst(lambda a, b: _relative(a.accuracy, b.accuracy)),
        rank_disparity=worst(lambda a, b: abs(a.rank - b.rank)),
        rank_ratio=worst(lambda a, b: _relative(a.rank, b.rank)),
        error_ratio=worst(lambda a, b: _relative(a.error, b.error)),
        groups=stats,
    )


def evaluate_fairness(
    embeddings: Tensor,
    identities: Tensor,
    groups: Tensor,
    group_names: Sequence[str] | None = None,
    reference_group: str | None = None,
    *,
    chunk_elements: int = _CHUNK_ELEMENTS,
    progress: bool = False,
) -> FairnessResult:
    """Ranks and fairness metrics of a set of embeddings in one call."""
    ranks = identification_ranks(embeddings, identities, chunk_elements=chunk_elements, progress=progress)
    return fairness_metrics(ranks, groups, group_names, reference_group)
