"""Face-identification error and fairness (FR-NAS definitions): the functional core (pure torch).

The torchmetrics wrapper is :class:`callbacks.metrics.IdentificationFairness`.

* Embeddings are L2-normalised; distance is Euclidean. ``d_same`` is a probe's distance to the
  nearest other image of its identity; ``rank`` (FR-NAS's paper text) is the number of *images*
  of other identities strictly closer than ``d_same``; ``rank_by_identity`` (FR-NAS's released
  code, ``rank_by_id``: its SMAC objective and its analysis) the number of distinct other
  *identities* with an image strictly closer. ``error = rank != 0``.
* Singletons (images whose identity has no other image) have no ``d_same``. ``"skip"``
  (default): they are not probes. ``"error"`` (FR-NAS's code): they are probes in error with
  ``rank = rank_by_identity = -1``, FR-NAS's "no same-identity image" value, which its group means
  average in like any other rank.
* Per group: accuracy, error, mean rank, mean rank_by_identity, n (probes). Between a group ``a``
  and a reference: disparity ``|acc_a - acc_ref|``, ratio ``|1 - acc_a / acc_ref|``,
  rank_disparity ``|rank_a - rank_ref|``, rank_ratio ``|1 - rank_a / rank_ref|``, the same two
  on rank_by_identity (rank_disparity_id, rank_ratio_id: FR-NAS's published rank disparity),
  error_ratio ``|1 - err_a / err_ref|`` (FR-NAS's formulas; a ratio of 0 to 0 is 0 here, NaN
  there). With a reference group the pairs are (every other group, reference) (FR-NAS:
  reference = female); without one, or with more than two groups and no reference, each metric
  is the maximum over all ordered pairs.

The N x N distance matrix is never materialised: probes are processed in chunks of rows against
all embeddings (on the embeddings' device). For unit vectors ``|x - y|^2 = 2 - 2 x.y``, so
"strictly closer" is "strictly larger cosine similarity", which a matrix product gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

# similarity-matrix elements per chunk: 8M (32 MB float32 + 8 MB bool + 32 MB int32 buffers)
_CHUNK_ELEMENTS = 8_000_000


Singletons = Literal["skip", "error"]


@dataclass
class ProbeRanks:
    """Per-probe results: ``index`` (P,) positions in the input, ``rank`` and ``rank_by_identity``
    (P,); ``singletons``: how many images had no other image of their identity, skipped or (rule
    ``"error"``) among the probes with rank -1."""

    index: Tensor
    rank: Tensor
    rank_by_identity: Tensor
    singletons: int = 0
    singleton_rule: Singletons = "skip"


def identification_ranks(
    embeddings: Tensor,
    identities: Tensor,
    *,
    singletons: Singletons = "skip",
    chunk_elements: int = _CHUNK_ELEMENTS,
    progress: bool = False,
) -> ProbeRanks:
    """Rank of every probe (an image whose identity has another image in the set; with
    ``singletons="error"`` every image, singletons with rank -1).

    Args:
        embeddings: (N, D) float; normalised here.
        identities: (N,) int64 identity labels.
        singletons: ``"skip"`` or ``"error"`` (FR-NAS's code), see the module docstring.
        progress: show a progress bar over the chunks (command-line use).

    Returns:
        :class:`ProbeRanks` for the P probes, in input order.
    """
    if singletons not in ("skip", "error"):
        raise ValueError(f"singletons must be 'skip' or 'error', got {singletons!r}")
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
    n_single = n - len(probes)
    if singletons == "error" and n_single:  # every image is a probe; singletons keep rank -1
        rank = torch.full((n,), -1, dtype=torch.long, device=emb.device).index_copy_(0, probes, rank)
        rank_id = torch.full((n,), -1, dtype=torch.long, device=emb.device).index_copy_(0, probes, rank_id)
        probes = torch.arange(n, device=emb.device)
    return ProbeRanks(probes, rank, rank_id, singletons=n_single, singleton_rule=singletons)


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
    """Overall error, mean ranks and the FR-NAS fairness metrics (rank disparity and rank ratio
    for both ranks), with per-group statistics and the singletons skipped or counted."""

    probes: int
    error: float
    rank: float
    rank_by_identity: float
    disparity: float
    ratio: float
    rank_disparity: float
    rank_ratio: float
    rank_disparity_id: float
    rank_ratio_id: float
    error_ratio: float
    groups: dict[str, GroupStats] = field(default_factory=dict)
    singletons: int = 0
    singleton_rule: Singletons = "skip"

    _KEYS = (
        "probes",
        "error",
        "rank",
        "rank_by_identity",
        "disparity",
        "ratio",
        "rank_disparity",
        "rank_ratio",
        "rank_disparity_id",
        "rank_ratio_id",
        "error_ratio",
        "singletons",
        "singleton_rule",
    )

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self._KEYS}
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
    error = (ranks.rank != 0).double()  # singletons counted as errors have rank -1
    correct = 1.0 - error
    rank_id = ranks.rank_by_identity.double()
    present = sorted({int(g) for g in probe_groups.tolist() if g >= 0})

    def name(g: int) -> str:
        return group_names[g] if group_names is not None and g < len(group_names) else str(g)

    stats: dict[str, GroupStats] = {}
    for g in present:
        m = probe_groups == g
        stats[name(g)] = GroupStats(
            accuracy=correct[m].mean().item(),  # both as FR-NAS: (rank == 0) and (rank != 0) means
            error=error[m].mean().item(),
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
        rank_by_identity=rank_id.mean().item() if total else math.nan,
        disparity=worst(lambda a, b: abs(a.accuracy - b.accuracy)),
        ratio=worst(lambda a, b: _relative(a.accuracy, b.accuracy)),
        rank_disparity=worst(lambda a, b: abs(a.rank - b.rank)),
        rank_ratio=worst(lambda a, b: _relative(a.rank, b.rank)),
        rank_disparity_id=worst(lambda a, b: abs(a.rank_by_identity - b.rank_by_identity)),
        rank_ratio_id=worst(lambda a, b: _relative(a.rank_by_identity, b.rank_by_identity)),
        error_ratio=worst(lambda a, b: _relative(a.error, b.error)),
        groups=stats,
        singletons=ranks.singletons,
        singleton_rule=ranks.singleton_rule,
    )


def evaluate_fairness(
    embeddings: Tensor,
    identities: Tensor,
    groups: Tensor,
    group_names: Sequence[str] | None = None,
    reference_group: str | None = None,
    *,
    singletons: Singletons = "skip",
    chunk_elements: int = _CHUNK_ELEMENTS,
    progress: bool = False,
) -> FairnessResult:
    """Ranks and fairness metrics of a set of embeddings in one call."""
    ranks = identification_ranks(
        embeddings, identities, singletons=singletons, chunk_elements=chunk_elements, progress=progress
    )
    return fairness_metrics(ranks, groups, group_names, reference_group)
