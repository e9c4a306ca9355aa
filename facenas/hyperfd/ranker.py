"""HyperFD's performance ranker F(c, d; theta) and its losses (../shared/design/HYPERFD.md sections
1 and 2).

* :class:`DatasetEncoder` M_theta: per-image features (an extractor of :mod:`.features`) -> a
  learnable MLP to 64 -> mean over the images. The 64-d mean is the dataset's meta-feature, the
  only thing about a dataset that leaves its client.
* :class:`ConfigEncoder`: an MLP over the one-hot values of the HPO parameters, a 2-layer GIN with
  virtual nodes over :func:`facenas.models.detection.proxyless.arch_graph` for architectures, both
  concatenated for the joint space.
* :class:`Ranker`: head([meta-feature; configuration embedding]) -> score; only the order of the
  scores within one dataset means anything.
* Losses: :func:`ranknet_loss` (pairwise logistic within a dataset), :func:`mse_loss` (the
  paper's ablation, on per-dataset standardised AP), :func:`triplet_loss` on meta-features with
  positives and negatives by configuration-preference similarity, and
  :class:`SynapticIntelligence` (Zenke et al. 2017, as the original ``pathint`` code does it).
* :class:`Transformations`: one linear 64x64 map Z^(u) per past task u, created as the identity,
  that maps meta-features of the extractor version that produced a stored task onto the current
  version, trained only on the platform's own (offline) datasets.

Hand-written: no library has HyperFD's losses or SI's bookkeeping; the GIN layers are
torch-geometric's ``GINConv``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ConfigSpace import ConfigurationSpace
from ConfigSpace.hyperparameters import CategoricalHyperparameter, OrdinalHyperparameter
from torch import Tensor, nn

from facenas.search.spaces import DERIVED, config_key, nas_arch


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two paired sequences; NaN where it is undefined (fewer
    than 3 points, or a constant sequence)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


HIDDEN = 64  # Table 6


def _nas_parameter(name: str) -> bool:
    return bool(DERIVED["arch"][0].fullmatch(name))


def _mlp(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))


# ---------------------------------------------------------------------------------- datasets


def prepare_features(features: np.ndarray) -> np.ndarray:
    """Per-image features as the dataset encoder takes them: signed log1p (label statistics span
    orders of magnitude: counts, variances, kurtoses), float32, NaN-free."""
    x = np.nan_to_num(np.asarray(features, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


class DatasetEncoder(nn.Module):
    """M_theta: per-image features -> MLP (D -> 64 -> 64, ReLU) -> mean over the images.

    ``mean``/``std`` standardise the (prepared) features; they are fitted once on the platform's
    offline datasets (:meth:`fit_scale`) and travel with the weights, so a client computes its
    meta-feature with exactly what the platform sends it."""

    def __init__(self, feature_dim: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = _mlp(feature_dim, hidden)
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    def fit_scale(self, features: Sequence[np.ndarray]) -> None:
        x = np.concatenate([prepare_features(f) for f in features])
        self.mean.copy_(torch.from_numpy(x.mean(0)))
        self.std.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-6)))

    def forward(self, features: Tensor) -> Tensor:
        """``features`` [n_images, D] (prepared) -> the meta-feature [64]."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected per-image features [n, {self.feature_dim}], got {tuple(features.shape)}")
        return self.mlp((features - self.mean) / self.std).mean(0)


# ----------------------------------------------------------------------------- configurations


class HPOEncoder(nn.Module):
    """One-hot of every categorical or ordinal (non-architecture) parameter of the space,
    concatenated (15 dimensions for ``hyperfd_hpo``), a numeric one as its position in its range
    (log scale where the parameter is), an inactive one as zeros -> MLP to 64. With
    ``architecture=True`` the architecture's parameters are encoded the same way (a flat encoding
    of the whole configuration, for methods without a graph encoder)."""

    def __init__(self, space: ConfigurationSpace, hidden: int = HIDDEN, architecture: bool = False) -> None:
        super().__init__()
        self.slots: list[tuple[str, list[Any] | tuple[float, float, bool]]] = []
        for hp in sorted(space.values(), key=lambda h: h.name):
            if _nas_parameter(hp.name) and not architecture:
                continue
            if isinstance(hp, CategoricalHyperparameter):
                self.slots.append((hp.name, list(hp.choices)))
            elif isinstance(hp, OrdinalHyperparameter):
                self.slots.append((hp.name, list(hp.sequence)))
            else:
                self.slots.append((hp.name, (float(hp.lower), float(hp.upper), bool(getattr(hp, "log", False)))))
        self.dim = sum(len(s) if isinstance(s, list) else 1 for _, s in self.slots)
        if self.dim == 0:
            raise ValueError(f"space {space.name!r} has no hyperparameter for the HPO encoder")
        self.mlp = _mlp(self.dim, hidden)

    def encode(self, config: Mapping[str, Any]) -> list[float]:
        out: list[float] = []
        for name, slot in self.slots:
            value = config.get(name)
            if isinstance(slot, list):
                hot = [0.0] * len(slot)
                if value is not None:
                    matches = [i for i, c in enumerate(slot) if c == value or _close(c, value)]
                    if not matches:
                        raise ValueError(f"configuration value {name}={value!r} is not one of {slot}")
                    hot[matches[0]] = 1.0
                out += hot
            else:
                lo, hi, log = slot
                if value is None:
                    out.append(0.0)
                else:
                    f = (lambda v: math.log(v)) if log else float
                    out.append((f(float(value)) - f(lo)) / max(f(hi) - f(lo), 1e-12))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


def _close(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


class ArchEncoder(nn.Module):
    """A 2-layer GIN (learnable epsilon, dropout 0.2) with a virtual node over the architecture
    graph, mean-pooled to 64 (NAS-Bench-301's ``GNN_node_Virtualnode``, HYPERFD.md 1.3: the
    virtual node is added to every node before each layer and updated between layers)."""

    def __init__(self, node_dim: int = 12, hidden: int = HIDDEN, layers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        from torch_geometric.nn import GINConv

        self.node = nn.Linear(node_dim, hidden)
        self.convs = nn.ModuleList(
            GINConv(
                nn.Sequential(
                    nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden)
                ),
                train_eps=True,
            )
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers))
        self.virtual = nn.Parameter(torch.zeros(hidden))
        self.virtual_mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden, 2 * hidden),
                nn.BatchNorm1d(2 * hidden),
                nn.ReLU(),
                nn.Linear(2 * hidden, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
            )
            for _ in range(layers - 1)
        )
        self.dropout = dropout

    def forward(self, graphs: Any) -> Tensor:
        from torch_geometric.nn import global_add_pool, global_mean_pool

        batch = graphs.batch
        n_graphs = int(graphs.num_graphs)
        h = self.node(graphs.x)
        virtual = self.virtual.expand(n_graphs, -1)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h + virtual[batch], graphs.edge_index))
            if i < len(self.convs) - 1:
                h = torch.relu(h)
            h = nn.functional.dropout(h, self.dropout, self.training)
            if i < len(self.convs) - 1:
                virtual = nn.functional.dropout(
                    self.virtual_mlps[i](global_add_pool(h, batch) + virtual), self.dropout, self.training
                )
        return global_mean_pool(h, batch)


class ConfigEncoder(nn.Module):
    """Configurations of a space -> embeddings: :class:`HPOEncoder` for its HPO parameters,
    :class:`ArchEncoder` for its architecture (``hyperfd_nas``), both concatenated (``hyperfd_joint``).
    Inputs are built once per configuration and cached by its key."""

    def __init__(self, space: ConfigurationSpace, hidden: int = HIDDEN) -> None:
        super().__init__()
        names = list(space.keys())
        has_nas = any(_nas_parameter(n) for n in names)
        has_hpo = any(not _nas_parameter(n) for n in names)
        self.hpo = HPOEncoder(space, hidden) if has_hpo else None
        self.arch = ArchEncoder(hidden=hidden) if has_nas else None
        self.dim = hidden * (has_hpo + has_nas)
        self._cache: dict[str, tuple[list[float] | None, Any]] = {}

    def _inputs(self, config: Mapping[str, Any]) -> tuple[list[float] | None, Any]:
        key = config_key(config)
        if key not in self._cache:
            from facenas.models.detection.proxyless import arch_graph

            hpo = self.hpo.encode(config) if self.hpo is not None else None
            graph = arch_graph(config.get("arch") or nas_arch(config)) if self.arch is not None else None
            self._cache[key] = (hpo, graph)
        return self._cache[key]

    def forward(self, configs: Sequence[Mapping[str, Any]]) -> Tensor:
        inputs = [self._inputs(c) for c in configs]
        parts = []
        device = next(self.parameters()).device
        if self.hpo is not None:
            parts.append(self.hpo(torch.tensor([i[0] for i in inputs], dtype=torch.float32, device=device)))
        if self.arch is not None:
            from torch_geometric.data import Batch

            parts.append(self.arch(Batch.from_data_list([i[1] for i in inputs]).to(device)))
        return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------------------- ranker


class Ranker(nn.Module):
    """F(c, d) = head([meta-feature of d; embedding of c]), head Linear -> ReLU -> Dropout ->
    Linear(64 -> 1) (HYPERFD.md 1.4)."""

    def __init__(self, space: ConfigurationSpace, feature_dim: int, hidden: int = HIDDEN, dropout: float = 0.2) -> None:
        super().__init__()
        self.dataset = DatasetEncoder(feature_dim, hidden)
        self.config = ConfigEncoder(space, hidden)
        self.head = nn.Sequential(
            nn.Linear(hidden + self.config.dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def meta(self, features: Tensor) -> Tensor:
        """The dataset's 64-d meta-feature from its prepared per-image features."""
        return self.dataset(features)

    def score(self, meta: Tensor, configs: Sequence[Mapping[str, Any]]) -> Tensor:
        """Scores [n] of ``configs`` on the dataset with meta-feature ``meta`` [64]."""
        embedded = self.config(configs)
        return self.head(torch.cat([meta.expand(len(configs), -1), embedded], dim=1)).squeeze(1)


# ------------------------------------------------------------------------------------- losses


def ranknet_loss(scores: Tensor, ap: Tensor) -> Tensor:
    """Pairwise logistic loss within one dataset: mean over pairs with AP_i > AP_j of
    log(1 + exp(-(s_i - s_j))); zero when no pair differs."""
    diff = scores[:, None] - scores[None, :]
    better = (ap[:, None] > ap[None, :]).float()
    n = better.sum()
    if n == 0:
        return scores.sum() * 0.0
    return (nn.functional.softplus(-diff) * better).sum() / n


def mse_loss(scores: Tensor, standardised_ap: Tensor) -> Tensor:
    """The ``HyperFD (MSE)`` ablation: regression on per-dataset standardised AP."""
    return nn.functional.mse_loss(scores, standardised_ap)


def preference_similarity(a: Mapping[str, float], b: Mapping[str, float], min_shared: int = 3) -> float:
    """Configuration-preference similarity of two datasets: the Spearman correlation of their APs
    over the configurations both evaluated (NaN with fewer than ``min_shared``)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < min_shared:
        return float("nan")
    return spearman([a[k] for k in shared], [b[k] for k in shared])


def triplet_loss(
    metas: Tensor, records: Sequence[Mapping[str, float]], margin: float = 0.5, min_gap: float = 0.1
) -> Tensor:
    """Triplet loss on the meta-features of the datasets of a batch: for each anchor the most
    preference-similar dataset is the positive and the least similar the negative (pairs with
    fewer than 3 shared configurations left out; anchors whose positive and negative differ by
    less than ``min_gap`` in similarity skipped); ``TripletMarginLoss(margin)``."""
    n = len(records)
    anchors, positives, negatives = [], [], []
    for i in range(n):
        sims = [(preference_similarity(records[i], records[j]), j) for j in range(n) if j != i]
        sims = [(s, j) for s, j in sims if not math.isnan(s)]
        if len(sims) < 2:
            continue
        best, worst = max(sims), min(sims)
        if best[0] - worst[0] < min_gap:
            continue
        anchors.append(i)
        positives.append(best[1])
        negatives.append(worst[1])
    if not anchors:
        return metas.sum() * 0.0
    return nn.functional.triplet_margin_loss(metas[anchors], metas[positives], metas[negatives], margin=margin, p=2)


class SynapticIntelligence:
    """Synaptic intelligence (Zenke, Poole and Ganguli 2017), as ``pathint``'s protocol does it:

    * after every optimiser step ``omega += -g * (theta_after - theta_before)`` with g the
      gradient of the unregularised loss (:meth:`step`);
    * at the end of a task ``Omega = max(0, Omega + omega / ((theta - theta_anchor)^2 + xi))``,
      ``theta_anchor = theta``, ``omega = 0`` (:meth:`consolidate`);
    * penalty ``sum Omega (theta - theta_anchor)^2`` (:meth:`penalty`; its gradient
      ``2 Omega (theta - theta_anchor)`` is added by :meth:`add_penalty_grad`).
    """

    def __init__(self, params: Mapping[str, nn.Parameter], damping: float = 0.1) -> None:
        self.params = dict(params)
        self.damping = damping
        self.omega = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.importance = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.anchor = {k: p.detach().clone() for k, p in self.params.items()}

    def penalty(self) -> Tensor:
        return sum((self.importance[k] * (p - self.anchor[k]) ** 2).sum() for k, p in self.params.items())  # type: ignore[return-value]

    @torch.no_grad()
    def add_penalty_grad(self, weight: float) -> None:
        for k, p in self.params.items():
            grad = 2.0 * weight * self.importance[k] * (p - self.anchor[k])
            p.grad = grad if p.grad is None else p.grad + grad

    @torch.no_grad()
    def step(self, before: Mapping[str, Tensor], unregularised_grads: Mapping[str, Tensor]) -> None:
        for k, p in self.params.items():
            g = unregularised_grads.get(k)
            if g is not None:
                self.omega[k] -= g * (p - before[k])

    @torch.no_grad()
    def consolidate(self) -> None:
        for k, p in self.params.items():
            delta = (p - self.anchor[k]) ** 2
            self.importance[k] = torch.clamp(self.importance[k] + self.omega[k] / (delta + self.damping), min=0.0)
            self.anchor[k] = p.detach().clone()
            self.omega[k].zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"damping": self.damping, "omega": self.omega, "importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.damping = float(state["damping"])
        for name in ("omega", "importance", "anchor"):
            getattr(self, name).update({k: v.clone() for k, v in state[name].items()})


class Transformations(nn.Module):
    """Z^(u): one linear 64x64 map per stored extractor version u, created as the identity (exact
    at creation: the version is the current one then), trained with L_trans on the platform's
    offline datasets: ``|Z^(u) M_u(d) - M_current(d)|^2``, with M_u(d) the offline meta-features
    the platform cached when version u was current (it owns those datasets)."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = hidden
        self.maps = nn.ModuleDict()
        self.offline: dict[str, Tensor] = {}

    def create(self, version: str, offline_metas: Tensor) -> None:
        z = nn.Linear(self.hidden, self.hidden, bias=False)
        with torch.no_grad():
            z.weight.copy_(torch.eye(self.hidden))
        self.maps[version] = z
        self.offline[version] = offline_metas.detach().clone()

    def forward(self, version: str, meta: Tensor) -> Tensor:
        if version not in self.maps:
            return meta  # the current version: no map
        return self.maps[version](meta)

    def loss(self, version: str, current_offline_metas: Tensor) -> Tensor:
        return ((self.maps[version](self.offline[version]) - current_offline_metas.detach()) ** 2).sum(1).mean()


__all__ = [
    "HIDDEN",
    "ArchEncoder",
    "ConfigEncoder",
    "DatasetEncoder",
    "HPOEncoder",
    "Ranker",
    "SynapticIntelligence",
    "Transformations",
    "mse_loss",
    "preference_similarity",
    "prepare_features",
    "ranknet_loss",
    "triplet_loss",
]
