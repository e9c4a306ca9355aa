"""Face-identification error and fairness (FR-NAS definitions): the functional core (pure torch).

The torchmetrics wrapper is :class:`facenas.callbacks.metrics.IdentificationFairness`.

* Embeddings are L2-normalised; distance is Euclidean. ``d_same`` is a probe's distance to the
  nearest other image of its identity; ``rank`` (FR-NAS's paper text) is the number of *images*
  of other identities strictly closer than ``d_same``; ``rank_by_identity`` (FR-NAS's released
  code, ``rank_by_id``: its SMAC objective and its analysis) the number of distinct other
  *identities* with an image strictly closer. ``error = rank != 0``.
* Singletons (images whose identity has no other image) have no ``d_same``. ``"skip"``
  (default): they are not probes. ``"error"`` (FR-NAS's code): they are probes in error with
  ``rank = rank_by_identity = -1``, FR-NAS's "no same-identity image" value, which its group means
  average in like any other rank.
* Unusable embedding rows (any NaN or infinite value, or all zeros: no direction to compare)
  are counted (``nonfinite_rows``, ``zero_rows``), reported, and left out of the probes and of
  the gallery, as if the images were absent; more than ``max_bad_fraction`` of them (default 5%)
  is a :class:`BadEmbeddingsError`. Scored as they are, they pass for correct: a NaN row's
  similarities are NaN, never "strictly closer", so every probe would get rank 0.
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

from facenas.core.errors import UserError

# similarity-matrix elements per chunk: 8M (32 MB float32 + 8 MB bool + 32 MB int32 buffers)
_CHUNK_ELEMENTS = 8_000_000


Singletons = Literal["skip", "error"]

# FR-NAS's fairness metrics, in the order reports list them (rank disparity by identity first:
# FR-NAS's published numbers; by image: its paper text)
FAIRNESS_METRICS = (
    "rank_disparity_id",
    "rank_disparity",
    "disparity",
    "ratio",
    "rank_ratio",
    "rank_ratio_id",
    "error_ratio",
)

# default limit on unusable embedding rows: a few broken rows (a bad image, a half-written file)
# are left out and reported; more means a diverged model or a broken export, and scoring what
# is left would measure a different, easier set (fewer distractors)
MAX_BAD_FRACTION = 0.05
# rows whose norm is below this (or overflows) are scaled by their largest value before
# normalising, which would otherwise leave them far from unit length
_TINY_NORM = 1e-6


class BadEmbeddingsError(UserError, ValueError):
    """Too many embedding rows are non-finite or all zeros to score the rest."""


@dataclass
class ProbeRanks:
    """Per-probe results: ``index`` (P,) positions in the input, ``rank`` and ``rank_by_identity``
    (P,); ``singletons``: how many images had no other image of their identity, skipped or (rule
    ``"error"``) among the probes with rank -1; ``nonfinite_rows`` / ``zero_rows``: how many
    embedding rows were left out as unusable, and ``excluded`` their positions (input order)."""

    index: Tensor
    rank: Tensor
    rank_by_identity: Tensor
    singletons: int = 0
    singleton_rule: Singletons = "skip"
    nonfinite_rows: int = 0
    zero_rows: int = 0
    excluded: Tensor | None = None


def identification_ranks(
    embeddings: Tensor,
    identities: Tensor,
    *,
    singletons: Singletons = "skip",
    max_bad_fraction: float = MAX_BAD_FRACTION,
    chunk_elements: int = _CHUNK_ELEMENTS,
    progress: bool = False,
) -> ProbeRanks:
    """Rank of every probe (an image whose identity has another image in the set; with
    ``singletons="error"`` every image, singletons with rank -1).

    Args:
        embeddings: (N, D) float; normalised here.
        identities: (N,) int64 identity labels.
        singletons: ``"skip"`` or ``"error"`` (FR-NAS's code), see the module docstring.
        max_bad_fraction: rows with a NaN or infinite value and all-zero rows are left out (of
            the probes and the gallery) and counted; more than this fraction of them raises
            :class:`BadEmbeddingsError`.
        progress: show a progress bar over the chunks (command-line use).

    Returns:
        :class:`ProbeRanks` for the P probes, in input order.
    """
    if singletons not in ("skip", "error"):
        raise ValueError(f"singletons must be 'skip' or 'error', got {singletons!r}")
    x = embeddings.float()
    if x.ndim != 2 or len(x) != identities.numel():
        raise ValueError(f"expected (N, D) embeddings and N identities, got {tuple(x.shape)} and {identities.numel()}")
    ids = identities.reshape(-1).to(x.device).long()
    nonfinite = ~torch.isfinite(x).all(dim=1)
    zero = ~nonfinite & ~(x != 0).any(dim=1)
    unusable = nonfinite | zero
    excluded = torch.nonzero(unusable).reshape(-1)
    n_nonfinite, n_zero = int(nonfinite.sum().item()), int(zero.sum().item())
    if n_nonfinite + n_zero > max_bad_fraction * len(x):
        raise BadEmbeddingsError(
            f"{n_nonfinite + n_zero} of {len(x)} embedding rows are unusable ({n_nonfinite} with a NaN or "
            f"infinite value, {n_zero} all zeros; 0-based rows {_first(excluded)}), more than max_bad_fraction="
            f"{max_bad_fraction:g}: the model diverged or the embeddings are broken"
        )
    kept = None
    if len(excluded):
        kept = torch.nonzero(~unusable).reshape(-1)
        x, ids = x[kept], ids[kept]
    # rows too small or too large for float32's norm: scale by their largest value first
    norm = torch.linalg.vector_norm(x, dim=1)
    odd = ~torch.isfinite(norm) | (norm < _TINY_NORM)
    if bool(odd.any()):
        x = x / torch.where(odd, x.abs().amax(dim=1), 1.0)[:, None]
    emb = torch.nn.functional.normalize(x, dim=1)
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
        from facenas.core.progress import track

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
    if kept is not None:  # positions in the input
        probes = kept[probes]
    return ProbeRanks(
        probes,
        rank,
        rank_id,
        singletons=n_single,
        singleton_rule=singletons,
        nonfinite_rows=n_nonfinite,
        zero_rows=n_zero,
        excluded=excluded,
    )


def _first(index: Tensor, count: int = 5) -> str:
    """``"3, 17, 42, ..."``: the first row positions (0-based) of ``index``."""
    shown = ", ".join(str(i) for i in index[:count].tolist())
    return shown + (", ..." if len(index) > count else "")


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
    for both ranks), with per-group statistics, the singletons skipped or counted, and the
    embedding rows left out as unusable (``nonfinite_rows``, ``zero_rows``; ``bad_embeddings``
    in :meth:`as_dict` is their sum; ``excluded_rows`` their 0-based positions). A metric that
    is undefined (no probe; fewer than two groups among the probes) is NaN, never 0.0, and
    ``undefined`` says why in one line each; ``ungrouped`` counts the probes without a group
    (counted overall, in no group) and ``notes`` says why rows have none (set by the file reader)."""

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
    nonfinite_rows: int = 0
    zero_rows: int = 0
    excluded_rows: list[int] = field(default_factory=list)
    ungrouped: int = 0
    undefined: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
        "nonfinite_rows",
        "zero_rows",
        "ungrouped",
    )

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self._KEYS}
        out["accuracy"] = 1.0 - self.error if self.probes else math.nan
        out["bad_embeddings"] = self.nonfinite_rows + self.zero_rows
        out["groups"] = {g: vars(s).copy() for g, s in self.groups.items()}
        out["undefined"] = list(self.undefined)
        out["notes"] = list(self.notes)
        return out

    @property
    def all_undefined(self) -> bool:
        """Whether no metric at all is defined (no probe)."""
        return self.probes == 0


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
        reference_group: compare every other group with this one (the metrics are NaN when it
            is one of ``group_names`` without a probe); None: maximum over all ordered pairs.
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
    # a reference group that exists but has no probe: nothing to compare with (not every pair)
    unprobed_reference = (
        reference_group is not None and reference_group in (group_names or ()) and reference_group not in stats
    )
    if reference_group is not None and reference_group in stats:
        pairs = [(a, reference_group) for a in names if a != reference_group]
    elif unprobed_reference:
        pairs = []
    else:
        pairs = [(a, b) for a in names for b in names if a != b]

    def worst(fn) -> float:
        return max((fn(stats[a], stats[b]) for a, b in pairs), default=math.nan)

    total = len(ranks.index)
    ungrouped = int((probe_groups < 0).sum().item())
    undefined = []
    if total == 0:
        why = "no image" if len(groups) == 0 else "every identity has a single image"
        if len(groups) and (ranks.nonfinite_rows or ranks.zero_rows):
            why += " among the usable rows"
        undefined.append(f"no probe ({why}): error, ranks and the fairness metrics are undefined")
    elif unprobed_reference:
        undefined.append(
            f"the reference group {reference_group!r} has no probe: the fairness metrics compare with it and are "
            "undefined"
        )
    elif not pairs:
        shown = ", ".join(names) if names else "none"
        undefined.append(
            f"{len(names)} group among the probes ({shown}): the fairness metrics compare two and are undefined"
            if len(names) == 1
            else f"no probe has a group ({ungrouped} without one): the fairness metrics are undefined"
        )
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
        nonfinite_rows=ranks.nonfinite_rows,
        zero_rows=ranks.zero_rows,
        excluded_rows=[] if ranks.excluded is None else ranks.excluded.tolist(),
        ungrouped=ungrouped,
        undefined=undefined,
    )


def evaluate_fairness(
    embeddings: Tensor,
    identities: Tensor,
    groups: Tensor,
    group_names: Sequence[str] | None = None,
    reference_group: str | None = None,
    *,
    singletons: Singletons = "skip",
    max_bad_fraction: float = MAX_BAD_FRACTION,
    chunk_elements: int = _CHUNK_ELEMENTS,
    progress: bool = False,
) -> FairnessResult:
    """Ranks and fairness metrics of a set of embeddings in one call (unusable rows: see
    :func:`identification_ranks`)."""
    ranks = identification_ranks(
        embeddings,
        identities,
        singletons=singletons,
        max_bad_fraction=max_bad_fraction,
        chunk_elements=chunk_elements,
        progress=progress,
    )
    return fairness_metrics(ranks, groups, group_names, reference_group)
