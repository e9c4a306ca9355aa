"""HyperFD and the methods it is compared with, each behind :class:`.online.Method`
(../shared/design/HYPERFD.md sections 2-4).

* :class:`HyperFD`: the ranker of :mod:`.ranker` trained as Algorithm 1 says: warm-up on the
  offline tables, then per online task B picks (top-ranked and random by ``explore``), 50 updates
  on batches drawn from past and current records (``ratio`` 0:1:1; Table 6's 5:1:1 adds offline
  ones), each preceded by 20 steps of the transformation maps, SI consolidation, and a store of
  the task's 64-d meta-feature, its extractor version and its records only. ``extractor`` and
  ``loss`` give Table 7's ablations.
* :class:`BestOnSource`: the top-B configurations of the source (WIDER) table.
* :class:`ZeroShotTransfer`: configurations chosen greedily to minimise the summed rank over the
  previous tasks (syne-tune's ``ZeroShotTransfer``).
* :class:`TrAutoML`: datasets grouped by their (fixed) mean image features; a new dataset gets the
  best configurations of its nearest group.
* :class:`HyperSTAR`: a joint task and configuration encoder regressing normalised scores with a
  task-similarity loss, re-fitted on everything seen after each task (no SI, no transformation).
* :class:`SCoT`: RankSVM over [configuration; meta-features] within datasets, a GP on its
  decision values, and expected improvement, picking the B configurations one at a time.
* :class:`SimilarPortfolio`: this project's method: a greedy portfolio over past datasets
  weighted by meta-feature similarity and re-weighted by agreement with the task's results.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facenas.search.spaces import config_key, load_space

from .online import Method, OnlineTask, RandomSearch, TaskData, evaluate_ranked, fill_random
from .ranker import (
    HPOEncoder,
    Ranker,
    SynapticIntelligence,
    Transformations,
    mse_loss,
    prepare_features,
    ranknet_loss,
    spearman,
    triplet_loss,
)


@dataclass
class _Item:
    """One dataset in a ranker batch: its meta-feature, configurations and APs."""

    meta: Tensor
    configs: list[dict[str, Any]]
    ap: Tensor
    standardised: Tensor
    records: Mapping[str, float]  # every AP known for the dataset (for preference similarity)


def _standardise(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / (std if std > 0 else 1.0)


class _Dataset:
    """A dataset the ranker trains on: its records and, while the platform may hold them, its
    prepared per-image features."""

    def __init__(self, name: str, configs: Mapping[str, dict], records: Mapping[str, float], features: Any) -> None:
        self.name = name
        self.keys = sorted(records)
        self.configs = [configs[k] for k in self.keys]
        self.records = dict(records)
        ap = np.array([records[k] for k in self.keys], dtype=np.float32)
        self.ap = torch.from_numpy(ap)
        self.standardised = torch.from_numpy(_standardise(ap).astype(np.float32))
        self.features = None if features is None else torch.from_numpy(prepare_features(features))

    def item(self, meta: Tensor, n: int | None, rng: np.random.Generator) -> _Item:
        idx = np.arange(len(self.keys))
        if n is not None and n < len(idx):
            idx = np.sort(rng.choice(len(idx), size=n, replace=False))
        index = torch.from_numpy(idx)
        return _Item(meta, [self.configs[i] for i in idx], self.ap[index], self.standardised[index], self.records)


class _RankerMethod(Method):
    """What HyperFD and HyperSTAR share: a :class:`Ranker` over the table's space and one
    extractor's features."""

    def __init__(
        self,
        space: str = "hyperfd_hpo",
        extractor: str = "detector",
        warmup_steps: int = 1000,
        steps_per_task: int = 50,
        batch_size: int = 4,
        configs_per_item: int = 8,
        lr: float = 1e-4,
        seed: int = 0,
    ) -> None:
        self.space = space
        self.extractor = extractor
        self.warmup_steps = warmup_steps
        self.steps_per_task = steps_per_task
        self.batch_size = batch_size
        self.configs_per_item = configs_per_item
        self.lr = lr
        self.seed = seed

    def _build(self, offline: Sequence[TaskData]) -> None:
        torch.manual_seed(self.seed)
        features = [d.feature(self.extractor) for d in offline]
        self.ranker = Ranker(load_space(self.space), features[0].shape[1])
        self.ranker.dataset.fit_scale(features)
        self.optimizer = torch.optim.Adam(self.ranker.parameters(), lr=self.lr)
        self.offline = [_Dataset(d.name, d.configs, d.val, f) for d, f in zip(offline, features)]

    @torch.no_grad()
    def scores(self, meta: Tensor, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self.ranker.eval()
        out = self.ranker.score(meta, configs).numpy()
        self.ranker.train()
        return out

    @torch.no_grad()
    def client_meta(self, features: np.ndarray) -> Tensor:
        """The meta-feature a client computes with the current dataset encoder (all it uploads)."""
        self.ranker.eval()
        meta = self.ranker.meta(torch.from_numpy(prepare_features(features)))
        self.ranker.train()
        return meta

    def _offline_item(self, rng: np.random.Generator) -> _Item:
        d = self.offline[int(rng.integers(len(self.offline)))]
        return d.item(self.ranker.meta(d.features), self.configs_per_item, rng)


class HyperFD(_RankerMethod):
    """HyperFD (Yan et al., CVPR 2022), Algorithm 1 on a lookup table.

    Args:
        space: the configurations' space (``hyperfd_hpo``, ``hyperfd_nas``, ``hyperfd_joint``).
        extractor: the per-image features of the dataset encoder (``detector``: default;
            ``label_stats``: the ``stats`` ablation; ``timm:<name>``: the ``ResNet`` one).
        loss: ``rank`` (pairwise logistic) or ``mse`` (the ablation).
        explore: share of the B picks drawn at random from outside the ranker's top (0: the
            top B, as Algorithm 1 says; the 2 + 2 of 0.5 is an inference from the paper).
        warmup_steps: ranker steps on the offline tables before the first task (not given by the
            paper).
        steps_per_task, trans_steps: N_iters = 50 and N_trans = 20 (Table 6).
        ratio: offline : past : current sampling weights of batch items (0:1:1, Algorithm 1;
            Table 6 gives 5:1:1).
        sim_weight, margin, si_weight, damping: 0.03, 0.5, 10000, 0.1.

    The defaults of ``explore`` and ``ratio`` are the reading chosen on the real-photo table's
    offline datasets alone, before its online evaluation
    (``configs/hyperfd/evaluate/real_photo_selection.yaml``,
    ``benchmarks/hyperfd/real_photo/selection.md``).
    """

    name = "hyperfd"

    def __init__(
        self,
        space: str = "hyperfd_hpo",
        extractor: str = "detector",
        loss: str = "rank",
        explore: float = 0.0,
        warmup_steps: int = 1000,
        steps_per_task: int = 50,
        trans_steps: int = 20,
        batch_size: int = 4,
        configs_per_item: int = 8,
        ratio: tuple[float, float, float] = (0.0, 1.0, 1.0),
        lr: float = 1e-4,
        sim_weight: float = 0.03,
        margin: float = 0.5,
        si_weight: float = 10000.0,
        damping: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(space, extractor, warmup_steps, steps_per_task, batch_size, configs_per_item, lr, seed)
        if loss not in ("rank", "mse"):
            raise ValueError(f"loss must be 'rank' or 'mse', got {loss!r}")
        if not 0 <= explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        self.loss = loss
        self.explore = explore
        self.trans_steps = trans_steps
        self.ratio = tuple(float(r) for r in ratio)
        self.sim_weight = sim_weight
        self.margin = margin
        self.si_weight = si_weight
        self.damping = damping

    # -------------------------------------------------------------- Algorithm 1

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        self._build(offline)
        self.si = SynapticIntelligence(dict(self.ranker.named_parameters()), self.damping)
        self.z = Transformations()
        self.z_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.past: list[dict[str, Any]] = []  # per past task: version, meta-feature, records, configs
        self.version = 0
        for _ in range(self.warmup_steps):
            self._step([self._offline_item(rng) for _ in range(self.batch_size)], regularise=False)
        self.si.consolidate()

    # what the warm-up sets, and the options it depends on (not explore, ratio, si_weight,
    # steps_per_task, trans_steps: they act online only)
    _WARM = ("ranker", "optimizer", "offline", "si", "z", "z_optimizers", "past", "version")

    def warmup_key(self) -> tuple:
        options = (self.loss, self.sim_weight, self.margin, self.damping)
        return (type(self).__name__, self.space, self.extractor, self.warmup_steps, self.batch_size,
                self.configs_per_item, self.lr, *options, self.seed)  # fmt: skip

    def warm_state(self) -> Any:
        # one deep copy keeps the optimiser's and SI's references to the ranker's parameters
        return copy.deepcopy({k: self.__dict__[k] for k in self._WARM}), torch.get_rng_state()

    def load_warm_state(self, state: Any) -> None:
        attributes, torch_rng = state
        self.__dict__.update(copy.deepcopy(attributes))
        torch.set_rng_state(torch_rng)

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        meta = self.client_meta(task.features(self.extractor))
        scores = self.scores(meta, task.pool)
        n_top = min(task.budget, round(task.budget * (1 - self.explore)))
        ranked = [task.pool[i] for i in np.argsort(-scores, kind="stable")]
        evaluate_ranked(task, ranked[:n_top])
        fill_random(task, rng)

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        configs = {config_key(c): c for c in task.pool}
        # the task's features stay (transiently, on its client) until the task ends
        current = _Dataset(task.name, configs, task.evaluated, task.features(self.extractor))
        for _ in range(self.steps_per_task):
            batch = self._batch(current, rng)
            if not batch:
                break  # nothing to learn from: one result, no offline data, no past task
            self._train_transformations()
            self._step(batch, regularise=True)
        self.si.consolidate()
        self.version += 1
        version = str(self.version)
        with torch.no_grad():
            meta = self.ranker.meta(current.features)  # computed by the client with the new encoder
            self.z.create(version, self._offline_metas())
            self.z_optimizers[version] = torch.optim.Adam(self.z.maps[version].parameters(), lr=self.lr)
        self.past.append(
            {
                "version": version,
                "meta": meta.detach().clone(),
                "records": dict(task.evaluated),
                "configs": {k: configs[k] for k in task.evaluated},
            }
        )

    # -------------------------------------------------------------- internals

    def _offline_metas(self) -> Tensor:
        if not self.offline:
            return torch.zeros(0, self.ranker.dataset.mlp[-1].out_features)
        return torch.stack([self.ranker.meta(d.features) for d in self.offline])

    def _train_transformations(self) -> None:
        if not self.past or not self.offline:
            return  # without the platform's offline data the maps stay as they are
        with torch.no_grad():
            target = self._offline_metas()
        for version, optimizer in self.z_optimizers.items():
            for _ in range(self.trans_steps):
                optimizer.zero_grad()
                self.z.loss(version, target).backward()
                optimizer.step()

    def _batch(self, current: _Dataset, rng: np.random.Generator) -> list[_Item]:
        # a pool with nothing in it, or a task with a single result (no pair to rank), is left out
        past = [p for p in self.past if len(p["records"]) >= 2]
        weights = np.array(
            [
                self.ratio[0] if self.offline else 0.0,
                self.ratio[1] if past else 0.0,
                self.ratio[2] if len(current.keys) >= 2 else 0.0,
            ]
        )
        if weights.sum() == 0:
            return []
        weights /= weights.sum()
        items = []
        for source in rng.choice(3, size=self.batch_size, p=weights):
            if source == 0:
                items.append(self._offline_item(rng))
            elif source == 1:
                chosen = past[int(rng.integers(len(past)))]
                with torch.no_grad():
                    meta = self.z(chosen["version"], chosen["meta"])
                d = _Dataset("past", chosen["configs"], chosen["records"], None)
                items.append(d.item(meta, None, rng))
            else:
                items.append(current.item(self.ranker.meta(current.features), None, rng))
        return items

    def _step(self, items: list[_Item], regularise: bool) -> None:
        self.optimizer.zero_grad()
        losses = []
        for item in items:
            scores = self.ranker.score(item.meta, item.configs)
            losses.append(ranknet_loss(scores, item.ap) if self.loss == "rank" else mse_loss(scores, item.standardised))
        loss = torch.stack(losses).mean()
        if self.sim_weight:
            loss = loss + self.sim_weight * triplet_loss(
                torch.stack([i.meta for i in items]), [i.records for i in items], self.margin
            )
        loss.backward()
        params = self.si.params
        grads = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
        before = {k: p.detach().clone() for k, p in params.items()}
        if regularise and self.si_weight:
            self.si.add_penalty_grad(self.si_weight)
        self.optimizer.step()
        self.si.step(before, grads)

    # -------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """What the platform keeps: the ranker's and transformation maps' weights, SI's state,
        and per past task its 64-d meta-feature, extractor version and (configuration, AP)
        records. No image, path or per-image feature."""
        return {
            "space": self.space,
            "extractor": self.extractor,
            "version": self.version,
            "ranker": self.ranker.state_dict(),
            "si": self.si.state_dict(),
            "transformations": {
                "maps": self.z.state_dict(),
                "offline_metas": dict(self.z.offline),
            },
            "past": self.past,
            "options": {
                "loss": self.loss,
                "explore": self.explore,
                "steps_per_task": self.steps_per_task,
                "trans_steps": self.trans_steps,
                "batch_size": self.batch_size,
                "configs_per_item": self.configs_per_item,
                "ratio": list(self.ratio),
                "lr": self.lr,
                "sim_weight": self.sim_weight,
                "margin": self.margin,
                "si_weight": self.si_weight,
                "damping": self.damping,
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], offline: Sequence[TaskData] = (), seed: int = 0) -> HyperFD:
        """A ranker continued from :meth:`state`, with the platform's offline datasets when it
        has them (without, updates draw from past and current records only and the
        transformation maps stay as they are)."""
        method = cls(space=state["space"], extractor=state["extractor"], seed=seed, **state["options"])
        torch.manual_seed(seed)
        weights = state["ranker"]
        method.ranker = Ranker(load_space(method.space), int(weights["dataset.mean"].shape[0]))
        method.ranker.load_state_dict(weights)
        method.optimizer = torch.optim.Adam(method.ranker.parameters(), lr=method.lr)
        method.offline = [_Dataset(d.name, d.configs, d.val, d.feature(method.extractor)) for d in offline]
        method.si = SynapticIntelligence(dict(method.ranker.named_parameters()), method.damping)
        method.si.load_state_dict(state["si"])
        method.z = Transformations()
        method.z_optimizers = {}
        for version, metas in state["transformations"]["offline_metas"].items():
            method.z.create(version, metas)
            method.z_optimizers[version] = torch.optim.Adam(method.z.maps[version].parameters(), lr=method.lr)
        method.z.load_state_dict(state["transformations"]["maps"])
        method.past = [dict(p) for p in state["past"]]
        method.version = int(state["version"])
        return method


# above this mean Spearman between its datasets' score vectors, a ranker ignores the data
IGNORES_DATA = 0.99


def dataset_sensitivity(method: HyperFD, datasets: Sequence[TaskData]) -> float:
    """How much a warmed-up ranker's preferences depend on the dataset: the mean Spearman
    correlation between its score vectors (over the configurations every dataset has) for all
    pairs of ``datasets``, each scored from the meta-feature its client would compute. Near 1
    (above :data:`IGNORES_DATA`) it ranks the same whatever the data; NaN for fewer than two
    datasets."""
    shared = sorted(set.intersection(*(set(d.configs) for d in datasets))) if datasets else []
    configs = [datasets[0].configs[k] for k in shared] if shared else []
    vectors = [list(method.scores(method.client_meta(d.feature(method.extractor)), configs)) for d in datasets]
    pairs = [spearman(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1 :]]
    pairs = [p for p in pairs if not math.isnan(p)]
    return float(np.mean(pairs)) if pairs else math.nan


class BestOnSource(Method):
    """The top-B configurations of the source dataset's table by validation AP, the same on
    every target (HYPERFD.md 4.2). Pool configurations the source never trained rank last."""

    name = "best_on_source"

    def __init__(self, source: str = "wider") -> None:
        self.source = source

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        table = next((d for d in offline if d.name == self.source), None)
        if table is None:
            raise ValueError(f"best_on_source: source {self.source!r} is not an offline dataset")
        self.values = table.val

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        ranked = sorted(task.pool, key=lambda c: -self.values.get(config_key(c), -math.inf))
        evaluate_ranked(task, ranked)


def _ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Rank 1 = the highest value (average ranks for ties)."""
    from scipy.stats import rankdata

    keys = list(values)
    ranks = rankdata([-values[k] for k in keys])
    return {k: float(r) for k, r in zip(keys, ranks)}


class ZeroShotTransfer(Method):
    """Greedy zero-shot portfolio (Wistuba et al. 2015; syne-tune's ``ZeroShotTransfer``): pick
    the configuration that minimises, summed over the previous tasks, the best normalised rank
    (rank / the task's number of configurations, in (0, 1]) among the configurations picked so
    far. A task's best starts at 1 (its worst), and a configuration a task did not evaluate (a
    past online task evaluates only B) is missing there: it leaves that task's best unchanged.
    Normalising per task keeps a past online task's 4 ranks on the scale of an offline table's
    48."""

    name = "zero_shot"

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        self.tasks = [_normalized_ranks(d.val) for d in offline]

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        keys = [config_key(c) for c in task.pool]
        ranks = np.array([[t.get(k, np.nan) for k in keys] for t in self.tasks])  # NaN: missing
        best = np.ones(len(self.tasks))
        for _ in range(task.budget):
            totals = np.fmin(best[:, None], ranks).sum(0)  # fmin: a missing rank keeps the best
            for k in task.evaluated:
                totals[keys.index(k)] = np.inf
            i = int(np.argmin(totals))
            task.evaluate(task.pool[i])
            best = np.fmin(best, ranks[:, i])

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        self.tasks.append(_normalized_ranks(task.evaluated))


def _normalized_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Rank / number of configurations: 1/n for the highest value, 1 for the lowest."""
    return {k: r / len(values) for k, r in _ranks(values).items()}


def _mean_features(features: np.ndarray) -> np.ndarray:
    return prepare_features(features).mean(0)


class SimilarPortfolio(Method):
    """This project's method: a greedy portfolio over past datasets weighted by similarity.

    :class:`ZeroShotTransfer` picks the B configurations that together do best on all past
    datasets alike; :class:`TrAutoML` keeps only the datasets of the nearest group. This method
    sits between them and learns within the task:

    1. Every known dataset (offline, then each finished online task) keeps its normalised ranks
       (rank / n) and its fixed meta-feature, the mean of its per-image features in units of the
       offline images' spread (as Tr-AutoML's; nothing is learned, and only this vector leaves a
       client).
    2. Weights ``w_t = exp(-(d_t / h)^2 / 2)`` from the distance ``d_t`` between the target's
       meta-feature and dataset t's, with ``h = bandwidth x`` the median distance
       (``bandwidth = None``: equal weights, which is ZeroShotTransfer).
    3. The B picks are greedy, one at a time, each minimising the weighted sum over datasets of
       the best normalised rank among the picks so far (a missing rank leaves a dataset's best
       unchanged): a portfolio that covers the datasets like the target, where a ranker picks
       its top B, which often agree with each other.
    4. After two or more evaluations on the target, each dataset's weight is multiplied by
       ``agreement ** adapt``, with ``agreement = (concordant pairs + 1) / (compared pairs + 2)``
       between the target's validation APs so far and the dataset's ranks: datasets that order
       the evaluated configurations as the target does steer the remaining picks.

    Its settings (``bandwidth``, ``adapt``) are chosen on the offline datasets alone
    (leave-one-offline-dataset-out, ``facenas hyperfd evaluate --select_on_offline``)."""

    name = "similar_portfolio"

    def __init__(self, extractor: str = "detector", bandwidth: float | None = 1.0, adapt: float = 2.0) -> None:
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 or None, got {bandwidth}")
        if adapt < 0:
            raise ValueError(f"adapt must be >= 0, got {adapt}")
        self.extractor = extractor
        self.bandwidth = bandwidth
        self.adapt = adapt

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        images = np.concatenate([prepare_features(d.feature(self.extractor)) for d in offline])
        self.mu, self.sd = images.mean(0), np.maximum(images.std(0), 1e-6)
        self.known = [(self._meta(d.feature(self.extractor)), _normalized_ranks(d.val)) for d in offline]

    def _meta(self, features: np.ndarray) -> np.ndarray:
        return (_mean_features(features) - self.mu) / self.sd

    def weights(self, meta: np.ndarray) -> np.ndarray:
        """The similarity weight of every known dataset for a target with meta-feature ``meta``."""
        if self.bandwidth is None or len(self.known) < 2:
            return np.ones(len(self.known))
        distance = np.array([np.linalg.norm(meta - m) for m, _ in self.known]) / math.sqrt(len(meta))
        h = self.bandwidth * max(float(np.median(distance)), 1e-12)
        return np.exp(-0.5 * (distance / h) ** 2)

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        self._last = self._meta(task.features(self.extractor))
        prior = self.weights(self._last)
        keys = [config_key(c) for c in task.pool]
        ranks = np.array([[r.get(k, np.nan) for k in keys] for _, r in self.known])  # NaN: missing
        best = np.ones(len(self.known))
        while task.remaining and len(task.evaluated) < len(keys):
            weight = prior * self._agreement(task.evaluated) ** self.adapt if self.adapt else prior
            totals = (weight[:, None] * np.fmin(best[:, None], ranks)).sum(0)
            for k in task.evaluated:
                totals[keys.index(k)] = np.inf
            i = int(np.argmin(totals))
            task.evaluate(task.pool[i])
            best = np.fmin(best, ranks[:, i])

    def _agreement(self, evaluated: Mapping[str, float]) -> np.ndarray:
        """Per known dataset, (concordant + 1) / (compared + 2) over the pairs of evaluated
        configurations that the dataset ranks and the target's validation APs order."""
        keys = list(evaluated)
        out = np.ones(len(self.known))
        for t, (_, ranks) in enumerate(self.known):
            concordant = compared = 0
            for a in range(len(keys)):
                for b in range(a + 1, len(keys)):
                    ka, kb = keys[a], keys[b]
                    if ka not in ranks or kb not in ranks or evaluated[ka] == evaluated[kb]:
                        continue
                    compared += 1
                    # a lower rank is better; a higher AP is better
                    concordant += (ranks[ka] < ranks[kb]) == (evaluated[ka] > evaluated[kb])
            out[t] = (concordant + 1) / (compared + 2)
        return out

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        self.known.append((self._last, _normalized_ranks(task.evaluated)))


class TrAutoML(Method):
    """Tr-AutoML (Xue et al., CVPR 2019) on a lookup table (HYPERFD.md 4.3): datasets described by
    their fixed mean image feature (in units of the offline images' spread), grouped, and one
    shared recommendation per group: the B configurations with the best mean normalised rank
    over the group's datasets.

    The paper's grouping is dynamic ("dataset clustering based on Markov process and statistical
    hypothesis test"); here [inferred: the paper gives no test statistic] the offline datasets
    are grouped by K-Means (``groups``), and each new dataset joins its nearest group unless its
    distance to the group's centre exceeds the members' mean distance by more than ``z`` of
    their standard deviations (a one-sided z-test), in which case it starts a group of its own
    and gets the recommendation of all datasets known so far. The group's centre moves as
    datasets join; nothing is re-clustered. Its meta-feature is the mean image feature, not the
    paper's performance of benchmark models, which would spend the target's budget [inferred]."""

    name = "tr_automl"

    def __init__(self, extractor: str = "detector", groups: int = 3, z: float = 2.0, seed: int = 0) -> None:
        self.extractor = extractor
        self.groups = groups
        self.z = z
        self.seed = seed

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        from sklearn.cluster import KMeans

        # scaled by the spread of the per-image features (the dataset encoder's scale), not of the
        # few dataset means, which would blow up dimensions that barely differ between datasets
        images = np.concatenate([prepare_features(d.feature(self.extractor)) for d in offline])
        self.mu, self.sd = images.mean(0), np.maximum(images.std(0), 1e-6)
        self.known = [((_mean_features(d.feature(self.extractor)) - self.mu) / self.sd, d.val) for d in offline]
        points = np.stack([f for f, _ in self.known])
        k = min(self.groups, len(points))
        labels = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(points).labels_
        self.members = [[i for i, label in enumerate(labels) if label == g] for g in range(k)]

    def assign(self, x: np.ndarray) -> int | None:
        """The group a dataset with meta-feature ``x`` joins, or None when the test rejects the
        nearest one."""
        centres = [np.mean([self.known[i][0] for i in m], 0) for m in self.members]
        distance = [float(np.linalg.norm(x - c)) for c in centres]
        g = int(np.argmin(distance))
        spread = [float(np.linalg.norm(self.known[i][0] - centres[g])) for i in self.members[g]]
        if len(spread) >= 2 and distance[g] > np.mean(spread) + self.z * max(np.std(spread, ddof=1), 1e-12):
            return None
        return g

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        x = (_mean_features(task.features(self.extractor)) - self.mu) / self.sd
        group = self.assign(x)
        members = range(len(self.known)) if group is None else self.members[group]
        score: dict[str, list[float]] = {}
        for i in members:
            values = self.known[i][1]
            for key, r in _ranks(values).items():
                score.setdefault(key, []).append(r / len(values))
        ranked = sorted(task.pool, key=lambda c: np.mean(score.get(config_key(c), [1.0])))
        evaluate_ranked(task, ranked)
        self._last = (x, group)

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        x, group = self._last
        self.known.append((x, dict(task.evaluated)))
        if group is None:
            self.members.append([len(self.known) - 1])
        else:
            self.members[group].append(len(self.known) - 1)


class HyperSTAR(_RankerMethod):
    """HyperSTAR (Mittal et al., CVPR 2020) on a lookup table (HYPERFD.md 4.4): the same task and
    configuration encoders, a sigmoid score regressed on per-dataset min-max normalised AP (binary
    cross-entropy) plus ``sim_weight * |cos(t_a, t_b) - s_ab|`` with s_ab the Spearman
    correlation of two datasets' APs; top-B by score (pure exploitation); re-fitted after each
    task on everything seen. It keeps the past tasks' per-image features (the original learns
    from their raw images end to end): unlike HyperFD it does not respect the privacy boundary.
    Each training step encodes a random batch of ``image_batch`` images per dataset, as the
    original samples a batch of images per task; None encodes every image."""

    name = "hyperstar"

    def __init__(self, sim_weight: float = 1.0, image_batch: int | None = 32, **kwargs: Any) -> None:
        if image_batch is not None and image_batch < 1:
            raise ValueError(f"image_batch must be >= 1 or None, got {image_batch}")
        super().__init__(**kwargs)
        self.sim_weight = sim_weight
        self.image_batch = image_batch

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:
        self._build(offline)
        self.seen = list(self.offline)
        for _ in range(self.warmup_steps):
            self._step(rng)

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        scores = self.scores(self.client_meta(task.features(self.extractor)), task.pool)
        evaluate_ranked(task, [task.pool[i] for i in np.argsort(-scores, kind="stable")])

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        configs = {config_key(c): c for c in task.pool}
        self.seen.append(_Dataset(task.name, configs, task.evaluated, task.features(self.extractor)))
        for _ in range(self.steps_per_task):
            self._step(rng)

    def _images(self, features: Tensor, rng: np.random.Generator) -> Tensor:
        if self.image_batch is None or len(features) <= self.image_batch:
            return features
        return features[torch.from_numpy(np.sort(rng.choice(len(features), self.image_batch, replace=False)))]

    def _step(self, rng: np.random.Generator) -> None:
        self.optimizer.zero_grad()
        chosen = [self.seen[int(i)] for i in rng.integers(len(self.seen), size=self.batch_size)]
        items = [d.item(self.ranker.meta(self._images(d.features, rng)), self.configs_per_item, rng) for d in chosen]
        losses = []
        for item in items:
            lo, hi = item.ap.min(), item.ap.max()
            target = (item.ap - lo) / (hi - lo) if hi > lo else torch.full_like(item.ap, 0.5)
            logits = self.ranker.score(item.meta, item.configs)
            losses.append(torch.nn.functional.binary_cross_entropy_with_logits(logits, target))
        loss = torch.stack(losses).mean()
        sims = []
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                shared = sorted(set(items[a].records) & set(items[b].records))
                s = spearman([items[a].records[k] for k in shared], [items[b].records[k] for k in shared])
                if not math.isnan(s):
                    cos = torch.nn.functional.cosine_similarity(items[a].meta, items[b].meta, dim=0)
                    sims.append((cos - s).abs())
        if sims and self.sim_weight:
            loss = loss + self.sim_weight * torch.stack(sims).mean()
        loss.backward()
        self.optimizer.step()


def scot_incumbent(mu: np.ndarray, evaluated: Sequence[int], values: Sequence[float]) -> float:
    """The incumbent of SCoT's expected improvement on the target dataset: the surrogate's value
    ``mu`` (over the candidates) at the target's own best evaluated configuration (candidate
    indices ``evaluated`` with observed ``values``), not the best surrogate value of any
    dataset; before the first evaluation, the best the surrogate predicts on the target."""
    if not len(evaluated):
        return float(np.max(mu))
    return float(mu[evaluated[int(np.argmax(values))]])


class SCoT(Method):
    """SCoT (Bardenet et al., ICML 2013) on a lookup table (HYPERFD.md 4.5): a RankSVM
    (``LinearSVC`` on within-dataset pairwise differences) over [one-hot configuration; min-max
    scaled dataset descriptor], a GP (RBF kernel) fitted on its decision values, and the B picks
    made one at a time by expected improvement, refitting after each evaluation. The descriptor
    is the mean label statistics of the dataset (``extractor``)."""

    name = "scot"

    def __init__(
        self,
        space: str = "hyperfd_hpo",
        extractor: str = "label_stats",
        max_pairs: int = 4000,
        max_gp_points: int = 400,
        seed: int = 0,
    ) -> None:
        self.space = space
        self.max_gp_points = max_gp_points
        self.extractor = extractor
        self.max_pairs = max_pairs
        self.seed = seed

    def warmup(self, offline: Sequence[TaskData], rng: np.random.Generator) -> None:

        # every parameter one-hot, the architecture's included (inactive layers as zeros)
        self._onehot = HPOEncoder(load_space(self.space), architecture=True).encode
        feats = [_mean_features(d.feature(self.extractor)) for d in offline]
        self.lo, self.hi = np.min(feats, 0), np.max(feats, 0)
        self.sources = [(self._descriptor(f), d.configs, d.val) for f, d in zip(feats, offline)]

    def _descriptor(self, mean_feature: np.ndarray) -> np.ndarray:
        return np.clip((mean_feature - self.lo) / np.maximum(self.hi - self.lo, 1e-6), -1, 2)

    def _rows(self, descriptor: np.ndarray, configs: Mapping[str, dict], values: Mapping[str, float]):
        keys = sorted(values)
        x = np.array([self._onehot(configs[k]) + list(descriptor) for k in keys])
        return x, np.array([values[k] for k in keys])

    def _fit(self, groups: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, WhiteKernel
        from sklearn.svm import LinearSVC

        diffs, signs = [], []
        for x, y in groups:
            i, j = np.triu_indices(len(y), 1)
            keep = y[i] != y[j]
            diffs.append(x[i[keep]] - x[j[keep]])
            signs.append(np.sign(y[i[keep]] - y[j[keep]]))
        d, s = np.concatenate(diffs), np.concatenate(signs)
        if len(d) > self.max_pairs:
            pick = rng.choice(len(d), size=self.max_pairs, replace=False)
            d, s = d[pick], s[pick]
        # balance the two classes: each pair once as (a - b, +) and once as (b - a, -)
        svm = LinearSVC(C=1.0, fit_intercept=False, max_iter=5000, random_state=self.seed)
        svm.fit(np.concatenate([d * s[:, None], -d * s[:, None]]), np.r_[np.ones(len(d)), -np.ones(len(d))])
        x_all = np.concatenate([x for x, _ in groups])
        target = svm.decision_function(x_all)
        # the GP on a seeded subsample (exact GPs are cubic in the number of points), always
        # keeping the target dataset's own rows (the last group when it has some)
        own = len(groups[-1][1]) if len(groups) > len(self.sources) else 0
        keep = np.arange(len(x_all))
        if len(keep) > self.max_gp_points:
            head = rng.choice(len(x_all) - own, size=self.max_gp_points - own, replace=False)
            keep = np.r_[np.sort(head), np.arange(len(x_all) - own, len(x_all))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp = GaussianProcessRegressor(
                RBF(length_scale=1.0) + WhiteKernel(1e-3), normalize_y=True, random_state=self.seed
            ).fit(x_all[keep], target[keep])
        return gp

    def select(self, task: OnlineTask, rng: np.random.Generator) -> None:
        from scipy.stats import norm

        descriptor = self._descriptor(_mean_features(task.features(self.extractor)))
        configs = {config_key(c): c for c in task.pool}
        position = {key: i for i, key in enumerate(configs)}
        candidates = np.array([self._onehot(c) + list(descriptor) for c in task.pool])
        sources = [self._rows(*s) for s in self.sources]  # fixed within the task: built once
        while task.remaining > 0:
            groups = list(sources)
            if len(task.evaluated) >= 2:
                groups.append(self._rows(descriptor, configs, task.evaluated))
            gp = self._fit(groups, rng)
            mu, sigma = gp.predict(candidates, return_std=True)
            best = scot_incumbent(mu, [position[k] for k in task.evaluated], list(task.evaluated.values()))
            z = (mu - best) / np.maximum(sigma, 1e-9)
            ei = (mu - best) * norm.cdf(z) + sigma * norm.pdf(z)
            ei[[position[k] for k in task.evaluated]] = -np.inf
            task.evaluate(task.pool[int(np.argmax(ei))])
        self._last = descriptor

    def update(self, task: OnlineTask, rng: np.random.Generator) -> None:
        configs = {config_key(c): c for c in task.pool}
        self.sources.append((self._last, configs, dict(task.evaluated)))


# the methods of the evaluation by name: (class, its options); ``{features}``, ``{stats}`` and
# ``{resnet}`` stand for the extractors the evaluation is given for each role
METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {
    "random": (RandomSearch, {}),
    "best_on_source": (BestOnSource, {}),
    "tr_automl": (TrAutoML, {"extractor": "{features}"}),
    "hyperstar": (HyperSTAR, {"extractor": "{features}"}),
    "scot": (SCoT, {"extractor": "{stats}"}),
    "zero_shot": (ZeroShotTransfer, {}),
    "hyperfd_resnet": (HyperFD, {"extractor": "{resnet}"}),
    "hyperfd_stats": (HyperFD, {"extractor": "{stats}"}),
    "hyperfd_mse": (HyperFD, {"extractor": "{features}", "loss": "mse"}),
    "hyperfd": (HyperFD, {"extractor": "{features}"}),
    "similar_portfolio": (SimilarPortfolio, {"extractor": "{features}"}),
}


def create_method(
    name: str,
    seed: int,
    extractors: Mapping[str, str],
    space: str = "hyperfd_hpo",
    source: str = "wider",
    warmup_steps: int = 1000,
    options: Mapping[str, Any] | None = None,
) -> Method:
    """A method of :data:`METHODS` with the evaluation's extractors (roles ``features``,
    ``stats``, ``resnet`` -> extractor names), space, source dataset and ranker warm-up, and
    ``options`` (constructor arguments, e.g. HyperFD's ``ratio``, ``si_weight``, ``explore``)
    over its defaults."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    cls, defaults = METHODS[name]
    kwargs: dict[str, Any] = {}
    for key, value in {**defaults, **(options or {})}.items():
        if isinstance(value, str) and value.startswith("{"):
            role = value.strip("{}")
            if role not in extractors:
                raise ValueError(f"method {name!r} needs a {role!r} extractor")
            value = extractors[role]
        kwargs[key] = value
    accepted = _accepted(cls)
    unknown = sorted(set(options or {}) - accepted)
    if unknown:
        raise ValueError(f"method {name!r} has no option {unknown[0]!r} (it takes {', '.join(sorted(accepted))})")
    for key, value in (("space", space), ("source", source), ("warmup_steps", warmup_steps), ("seed", seed)):
        if key in accepted and key not in (options or {}):
            kwargs[key] = value
    if isinstance(kwargs.get("ratio"), list):
        kwargs["ratio"] = tuple(kwargs["ratio"])
    return cls(**kwargs)


def _accepted(cls: type) -> set[str]:
    """The constructor arguments of ``cls``; a class taking ``**kwargs`` (HyperSTAR) passes them
    on to its bases, so theirs count too."""
    import inspect

    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters
            accepted |= {p for p, v in params.items() if p != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                break
    return accepted


def method_specs(methods: Sequence[str | Mapping[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The methods of an evaluation, each a name of :data:`METHODS` or a mapping ``{name, method,
    <options>}`` (a reading of a method under its own name, e.g. ``{name: hyperfd_alg1, method:
    hyperfd, ratio: [0, 1, 1]}``): ``{name: (method, options)}``, checked."""
    specs: dict[str, tuple[str, dict[str, Any]]] = {}
    for entry in methods:
        if isinstance(entry, str):
            name, method, options = entry, entry, {}
        elif isinstance(entry, Mapping):
            options = dict(entry)
            method = str(options.pop("method", options.get("name", "")))
            name = str(options.pop("name", method))
        else:
            raise ValueError(f"a method is a name or {{name, method, <options>}}, got {entry!r}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        unknown = sorted(set(options) - _accepted(METHODS[method][0]))
        if unknown:
            raise ValueError(f"method {name!r} ({method}) has no option {unknown[0]!r}")
        if name in specs:
            raise ValueError(f"method name {name!r} is given twice")
        specs[name] = (method, options)
    return specs


__all__ = [
    "METHODS",
    "BestOnSource",
    "HyperFD",
    "HyperSTAR",
    "SCoT",
    "SimilarPortfolio",
    "TrAutoML",
    "ZeroShotTransfer",
    "create_method",
    "method_specs",
]
