"""HyperFD's dataset augmentation by clustering (supplementary B.4, Table 5).

The images of one dataset are clustered on each of their feature sets by nine scikit-learn
set-ups; every cluster becomes a sub-dataset, a new "dataset" for HyperFD's meta-learning that
costs no labelling. A sub-dataset keeps each image's split from its parent's split file, and it is
written as a *subset split file* (see :mod:`facenas.datamodules.splits`) that the data modules read like any
other split file, with the parent's data: no image is copied.

The nine set-ups (``SETUPS``), each run with every ``n_clusters`` but DBSCAN (run once):

=========================== ===========================================================
``kmeans``                  ``KMeans(init='k-means++', max_iter=2000)``
``kmeans_random``           ``KMeans(init='random', max_iter=2000)``
``pca_kmeans``              ``PCA(n_components=20)`` -> KMeans
``pca_tsne_kmeans``         ``PCA(n_components=50)`` -> ``TSNE(n_components=2)`` -> KMeans
``dbscan_l2``               ``DBSCAN(eps=10, metric='l2')``
``dbscan_cosine``           ``DBSCAN(eps=10, metric='cosine')``
``agglomerative_ward``      ``AgglomerativeClustering()`` (ward linkage)
``agglomerative_manhattan`` ``AgglomerativeClustering(metric='manhattan', linkage='average')``
``birch``                   ``Birch()``
=========================== ===========================================================

The entry point for the command line is :func:`augment`; :func:`cluster_subsets` and
:func:`write_subsets` are its two halves.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenas.datamodules.splits import DEFAULT_RATIOS, SPLITS, read_split_file, write_subset_split

INDEX_FORMAT = "facenas-hyperfd-subsets"
DEFAULT_N_CLUSTERS = (2, 3, 5, 7)


# ---------------------------------------------------------------------------------------- set-ups


def _kmeans(init: str) -> Callable[[int | None, int], Any]:
    from sklearn.cluster import KMeans

    # n_init=10: the scikit-learn default of HyperFD's time (now "auto", one run for k-means++)
    return lambda k, seed: KMeans(n_clusters=k, init=init, max_iter=2000, n_init=10, random_state=seed)


def _pca(n_components: int) -> Callable[[int, int, int], list]:
    def build(n: int, d: int, seed: int) -> list:
        from sklearn.decomposition import PCA

        return [PCA(n_components=min(n_components, n, d), random_state=seed)]

    return build


def _pca_tsne(n: int, d: int, seed: int) -> list:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    # t-SNE needs perplexity < n_samples; (n - 1) / 3 is the usual bound for few samples
    perplexity = min(30.0, max(1.0, (n - 1) / 3))
    return [
        PCA(n_components=min(50, n, d), random_state=seed),
        TSNE(n_components=2, perplexity=perplexity, random_state=seed),
    ]


def _dbscan(metric: str) -> Callable[[int | None, int], Any]:
    from sklearn.cluster import DBSCAN

    return lambda k, seed: DBSCAN(eps=10, metric=metric)


def _agglomerative(**kwargs: Any) -> Callable[[int | None, int], Any]:
    from sklearn.cluster import AgglomerativeClustering

    return lambda k, seed: AgglomerativeClustering(n_clusters=k, **kwargs)


def _birch(k: int | None, seed: int) -> Any:
    from sklearn.cluster import Birch

    return Birch(n_clusters=k)


@dataclass(frozen=True)
class Setup:
    """One clustering set-up of Table 5.

    Attributes:
        name: the set-up's name (the key in ``SETUPS``).
        cluster: ``(n_clusters, seed) -> estimator`` with ``fit_predict``; ``n_clusters`` is None
            for set-ups without it.
        reduce: ``(n_samples, n_features, seed) -> [transformers]`` run before clustering; they do
            not depend on ``n_clusters``, so they run once per feature set, not once per k.
        uses_k: whether the set-up takes ``n_clusters`` (DBSCAN does not: it runs once).
    """

    name: str
    cluster: Callable[[int | None, int], Any]
    reduce: Callable[[int, int, int], list] | None = None
    uses_k: bool = True


SETUPS: dict[str, Setup] = {
    s.name: s
    for s in (
        Setup("kmeans", _kmeans("k-means++")),
        Setup("kmeans_random", _kmeans("random")),
        Setup("pca_kmeans", _kmeans("k-means++"), reduce=_pca(20)),
        Setup("pca_tsne_kmeans", _kmeans("k-means++"), reduce=_pca_tsne),
        # eps=10 as written; with cosine distance (<= 2) it gives one cluster: dropped as too large
        Setup("dbscan_l2", _dbscan("l2"), uses_k=False),
        Setup("dbscan_cosine", _dbscan("cosine"), uses_k=False),
        Setup("agglomerative_ward", _agglomerative()),
        # scikit-learn >= 1.2 names it metric (affinity is gone); ward allows only euclidean
        Setup("agglomerative_manhattan", _agglomerative(metric="manhattan", linkage="average")),
        Setup("birch", _birch),
    )
}


# ---------------------------------------------------------------------------------------- filtering


@dataclass(frozen=True)
class Rules:
    """Which sub-datasets are kept.

    HyperFD keeps ``800 <= |S| <= |WIDER| - 800`` of 16,097 images (about 5 % at each end) and drops
    sub-datasets whose split "becomes too deviated from balance". Scaled to any parent of ``n``
    images, a sub-dataset ``S`` is kept when

    * size: ``lo <= |S| <= n - lo`` with ``lo = max(min_images, ceil(min_fraction * n))``
      (on the WIDER subset here, 1,633 images: ``82 <= |S| <= 1551``);
    * balance: every split the parent has is non-empty in ``S``, and each split's fraction of ``S``
      is within ``max_deviation`` (relative) of its fraction of the parent: with 6:1:3 and 0.5,
      train in [0.30, 0.90], val in [0.05, 0.15], test in [0.15, 0.45];
    * it is not the same image set as a sub-dataset kept before it (the first is kept).

    Attributes:
        min_fraction: the smallest sub-dataset as a fraction of the parent (800 / 16,097 ~ 0.05).
        min_images: a floor on the smallest sub-dataset, for small parents (30: three validation
            images at 6:1:3).
        max_deviation: how far, relative to the parent's, a split's fraction may be.
    """

    min_fraction: float = 0.05
    min_images: int = 30
    max_deviation: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_fraction < 0.5:
            raise ValueError(f"min_fraction must be in [0, 0.5), got {self.min_fraction}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be at least 1, got {self.min_images}")
        if self.max_deviation < 0:
            raise ValueError(f"max_deviation must be non-negative, got {self.max_deviation}")

    def size_bounds(self, n_parent: int) -> tuple[int, int]:
        """The smallest and largest sub-dataset kept from a parent of ``n_parent`` images."""
        lo = max(self.min_images, math.ceil(self.min_fraction * n_parent))
        return lo, n_parent - lo

    def reject(self, counts: Mapping[str, int], parent_counts: Mapping[str, int]) -> str | None:
        """Why a sub-dataset with split ``counts`` is dropped (``too_small``, ``too_large``,
        ``unbalanced``), or None when it is kept."""
        n, n_parent = sum(counts.values()), sum(parent_counts.values())
        lo, hi = self.size_bounds(n_parent)
        if n < lo:
            return "too_small"
        if n > hi:
            return "too_large"
        for split in SPLITS:
            if parent_counts.get(split, 0) == 0:
                continue
            reference = parent_counts[split] / n_parent
            if counts.get(split, 0) == 0 or abs(counts.get(split, 0) / n - reference) > self.max_deviation * reference:
                return "unbalanced"
        return None


# ---------------------------------------------------------------------------------------- clustering


@dataclass(frozen=True)
class SubDataset:
    """One cluster kept as a sub-dataset.

    Attributes:
        names: its image names, sorted.
        features: the feature set it was clustered on.
        setup: the set-up's name (a key of ``SETUPS``).
        n_clusters: the set-up's number of clusters (None for DBSCAN).
        cluster: the cluster's label.
        parameters: the set-up as run, e.g. ``PCA(n_components=20) -> KMeans(...)``.
        counts: its images per split (train / val / test), from the parent's split.
    """

    names: tuple[str, ...]
    features: str
    setup: str
    n_clusters: int | None
    cluster: int
    parameters: str
    counts: dict[str, int]

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def id(self) -> str:
        """A unique, file-name-safe name: ``<features>.<setup>[.k<k>].c<cluster>``."""
        k = "" if self.n_clusters is None else f".k{self.n_clusters}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.features}.{self.setup}{k}.c{self.cluster}")

    def describe(self) -> dict[str, Any]:
        """The set-up as recorded in the subset split file and the index."""
        return {
            "features": self.features,
            "setup": self.setup,
            "n_clusters": self.n_clusters,
            "cluster": self.cluster,
            "parameters": self.parameters,
        }


@dataclass
class AugmentReport:
    """What :func:`cluster_subsets` produced and dropped.

    Attributes:
        images: the parent's images per split.
        runs: clusterings run (feature sets x set-ups x n_clusters, DBSCAN once).
        candidates: clusters found (DBSCAN's noise is no cluster).
        noise: images DBSCAN left as noise, summed over its runs.
        dropped: clusters dropped per rule (``too_small``, ``too_large``, ``unbalanced``, ``duplicate``).
        kept: sub-datasets kept.
        bounds: the size bounds applied (see :class:`Rules`).
        rules: the rules applied.
    """

    images: dict[str, int]
    rules: Rules
    bounds: tuple[int, int]
    runs: int = 0
    candidates: int = 0
    noise: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": dict(self.images),
            "rules": asdict(self.rules),
            "bounds": list(self.bounds),
            "runs": self.runs,
            "candidates": self.candidates,
            "noise": self.noise,
            "dropped": {k: self.dropped.get(k, 0) for k in ("too_small", "too_large", "unbalanced", "duplicate")},
            "kept": self.kept,
        }

    def summary(self) -> str:
        n = sum(self.images.values())
        parts = " / ".join(f"{k} {self.images.get(k, 0)}" for k in SPLITS)
        lo, hi = self.bounds
        d = self.dropped
        return "\n".join(
            [
                f"{n} images ({parts}); {self.runs} clusterings gave {self.candidates} clusters"
                + (f" (DBSCAN left {self.noise} image-runs as noise)" if self.noise else ""),
                f"dropped: {d['too_small']} too small (< {lo} images), {d['too_large']} too large (> {hi}), "
                f"{d['unbalanced']} unbalanced (a split's fraction off the parent's by more than "
                f"{100 * self.rules.max_deviation:g}% or empty), {d['duplicate']} duplicates",
                f"kept {self.kept} sub-datasets",
            ]
        )


def _check_inputs(
    names: Sequence[str],
    splits: Mapping[str, str],
    features: Mapping[str, np.ndarray],
    setups: Sequence[str],
    n_clusters: Sequence[int],
) -> dict[str, np.ndarray]:
    if not names:
        raise ValueError("no images to cluster")
    repeated = next((n for n, c in Counter(names).items() if c > 1), None)
    if repeated is not None:
        raise ValueError(f"image {repeated!r} is named twice")
    missing = next((n for n in names if n not in splits), None)
    if missing is not None:
        raise ValueError(f"image {missing!r} has no split in the parent's split")
    bad = next((n for n in names if splits[n] not in SPLITS), None)
    if bad is not None:
        raise ValueError(f"image {bad!r} is assigned to {splits[bad]!r}, not one of {', '.join(SPLITS)}")
    unknown = next((s for s in setups if s not in SETUPS), None)
    if unknown is not None:
        raise ValueError(f"unknown clustering set-up {unknown!r}; choose from {', '.join(SETUPS)}")
    wrong_k = next((k for k in n_clusters if not isinstance(k, int | np.integer) or not 2 <= k < len(names)), None)
    if wrong_k is not None:
        raise ValueError(f"n_clusters {wrong_k!r} must be an integer from 2 to {len(names) - 1} (the images less one)")
    if not features:
        raise ValueError("no feature sets to cluster")
    out = {}
    for name, array in features.items():
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] != len(names):
            raise ValueError(
                f"feature set {name!r} has shape {array.shape}; it needs one row per image: ({len(names)}, dims)"
            )
        if not np.isfinite(array).all():
            row = int(np.argwhere(~np.isfinite(array))[0, 0])
            raise ValueError(f"feature set {name!r} has a non-finite value (image {names[row]!r})")
        out[name] = array
    return out


def _describe(steps: Iterable[Any]) -> str:
    return " -> ".join(re.sub(r"\s+", " ", repr(s)) for s in steps)


def cluster_subsets(
    names: Sequence[str],
    splits: Mapping[str, str],
    features: Mapping[str, np.ndarray],
    *,
    setups: Sequence[str] = tuple(SETUPS),
    n_clusters: Sequence[int] = DEFAULT_N_CLUSTERS,
    rules: Rules = Rules(),
    seed: int = 0,
) -> tuple[list[SubDataset], AugmentReport]:
    """Cluster the images on every feature set with every set-up and keep the clusters that pass
    ``rules`` as sub-datasets.

    Args:
        names: the parent's images, in the row order of the feature arrays.
        splits: every image's split in the parent (image name -> train / val / test).
        features: feature set name -> (len(names), dims) array.
        setups: names of the set-ups to run (``SETUPS``; default all nine).
        n_clusters: the numbers of clusters (HyperFD: 2, 3, 5, 7).
        rules: which clusters are kept (:class:`Rules`).
        seed: ``random_state`` of every randomised step (K-Means, PCA, t-SNE).

    Returns:
        The sub-datasets in the order feature set, set-up, n_clusters, cluster label (a duplicate
        image set keeps the first), and the report of what was dropped by which rule.
    """
    arrays = _check_inputs(names, splits, features, setups, n_clusters)
    labels_of = np.array([splits[n] for n in names])
    parent_counts = {s: int((labels_of == s).sum()) for s in SPLITS}
    report = AugmentReport(images=parent_counts, rules=rules, bounds=rules.size_bounds(len(names)))
    kept: list[SubDataset] = []
    seen: set[tuple[str, ...]] = set()
    order = np.array(names, dtype=object)
    for feature_name, array in arrays.items():
        for setup_name in setups:
            setup = SETUPS[setup_name]
            steps = setup.reduce(*array.shape, seed) if setup.reduce is not None else []
            reduced = array
            for step in steps:
                reduced = step.fit_transform(reduced)
            for k in sorted(set(n_clusters)) if setup.uses_k else [None]:
                estimator = setup.cluster(None if k is None else int(k), seed)
                labels = estimator.fit_predict(reduced)
                report.runs += 1
                report.noise += int((labels == -1).sum())
                parameters = _describe([*steps, estimator])
                for label in sorted(set(labels.tolist()) - {-1}):
                    members = labels == label
                    report.candidates += 1
                    counts = {s: int((labels_of[members] == s).sum()) for s in SPLITS}
                    reason = rules.reject(counts, parent_counts)
                    image_set = tuple(sorted(order[members]))
                    if reason is None and image_set in seen:
                        reason = "duplicate"
                    if reason is not None:
                        report.dropped[reason] += 1
                        continue
                    seen.add(image_set)
                    kept.append(SubDataset(image_set, feature_name, setup_name, k, int(label), parameters, counts))
    report.kept = len(kept)
    return kept, report


# ---------------------------------------------------------------------------------------- writing


def _parent(
    parent: str | Path | Mapping[str, str], seed: int | None, ratios: Sequence[float] | None
) -> tuple[dict[str, str], int, list[float], str, str | None]:
    """(assignments, seed, ratios, unit, path) of the parent split."""
    if isinstance(parent, str | Path):
        if not Path(parent).is_file():
            raise FileNotFoundError(f"parent split file {parent} does not exist")
        record = read_split_file(parent)
        if record["seed"] is None or not record["ratios"]:
            raise ValueError(f"parent split file {parent} records no seed or ratios")
        return record["assignments"], record["seed"], record["ratios"], record["unit"], str(parent)
    ratios = DEFAULT_RATIOS if ratios is None else ratios
    return dict(parent), 0 if seed is None else seed, [float(r) for r in ratios], "image", None


def write_subsets(
    subsets: Sequence[SubDataset],
    parent: str | Path | Mapping[str, str],
    out_dir: str | Path,
    *,
    seed: int | None = None,
    ratios: Sequence[float] | None = None,
    report: AugmentReport | None = None,
) -> Path:
    """Write one subset split file per sub-dataset, ``<out_dir>/<id>.json``, and the index of them,
    ``index.json`` and ``index.csv`` (file, id, set-up, sizes per split).

    A subset file holds each image's split *from the parent* and the parent's seed and ratios, so
    ``FaceDetectionDataModule(split_file=<it>, seed=<the parent's>)`` on the parent's data trains and
    evaluates on the sub-dataset. Subset files listed by an earlier index in ``out_dir`` but not by
    this one are removed (they were written here; leaving them would mix two runs).

    Args:
        parent: the parent's split file, or its assignments (image name -> split).
        seed, ratios: the parent's split seed and ratios when ``parent`` is assignments (default
            0 and 6:1:3, the data modules' defaults); a split file records its own.
        report: the report of :func:`cluster_subsets`, recorded in ``index.json``.

    Returns:
        The path of ``index.json``.
    """
    assignments, split_seed, split_ratios, unit, parent_path = _parent(parent, seed, ratios)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    ids = Counter(s.id for s in subsets)
    twice = next((i for i, c in ids.items() if c > 1), None)
    if twice is not None:
        raise ValueError(f"two sub-datasets are named {twice!r}")
    for subset in subsets:
        missing = next((n for n in subset.names if n not in assignments), None)
        if missing is not None:
            raise ValueError(f"sub-dataset {subset.id}: image {missing!r} is not in the parent's split")
        picked = {n: assignments[n] for n in subset.names}
        counts = dict(Counter(picked.values()))
        if any(counts.get(s, 0) != subset.counts.get(s, 0) for s in SPLITS):
            raise ValueError(
                f"sub-dataset {subset.id} was clustered with another split than the parent's: "
                f"{subset.counts} there, {counts} here"
            )
        file = f"{subset.id}.json"
        write_subset_split(
            out / file,
            picked,
            seed=split_seed,
            ratios=split_ratios,
            unit=unit,
            parent=parent_path,
            setup=subset.describe(),
        )
        rows.append({"file": file, "id": subset.id, **subset.describe(), "images": subset.size, **subset.counts})
    index = out / "index.json"
    if index.is_file():
        try:
            old = json.loads(index.read_text())
            stale = [r["file"] for r in old.get("subsets", [])] if old.get("format") == INDEX_FORMAT else []
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
            stale = []
        current = {r["file"] for r in rows}
        for file in stale:
            path = out / Path(file).name
            if file not in current and path.suffix == ".json" and path.is_file():
                path.unlink()
    record = {
        "format": INDEX_FORMAT,
        "parent": parent_path,
        "seed": split_seed,
        "ratios": split_ratios,
        "report": None if report is None else report.as_dict(),
        "subsets": rows,
    }
    index.write_text(json.dumps(record, indent=1))
    columns = ["file", "id", "features", "setup", "n_clusters", "cluster", "images", *SPLITS, "parameters"]
    with open(out / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return index


# ---------------------------------------------------------------------------------------- entry point


@dataclass
class AugmentResult:
    """What :func:`augment` did: the sub-datasets, the report and the index written; printing it
    gives the summary."""

    subsets: list[SubDataset]
    report: AugmentReport
    index: Path

    def summary(self) -> str:
        setups = Counter(s.setup for s in self.subsets)
        per_setup = ", ".join(f"{name} {setups[name]}" for name in SETUPS if setups[name])
        return "\n".join(
            [
                "HyperFD dataset augmentation by clustering",
                self.report.summary(),
                *([f"per set-up: {per_setup}"] if per_setup else []),
                f"subset split files and their index: {self.index}",
            ]
        )

    def __str__(self) -> str:
        return self.summary()


def augment(
    data: Sequence[str] | Sequence[Any],
    splits: str | Path | Mapping[str, str],
    features: Mapping[str, np.ndarray],
    out_dir: str | Path,
    *,
    setups: Sequence[str] = tuple(SETUPS),
    n_clusters: Sequence[int] = DEFAULT_N_CLUSTERS,
    rules: Rules = Rules(),
    seed: int = 0,
    split_seed: int | None = None,
    split_ratios: Sequence[float] | None = None,
) -> AugmentResult:
    """Cluster a dataset into sub-datasets and write them as subset split files (the whole of
    HyperFD's augmentation; :func:`cluster_subsets` then :func:`write_subsets`).

    Args:
        data: the images, in the row order of the feature arrays: names, or samples with a
            ``name`` (e.g. :class:`~facenas.datamodules.DetectionSample`).
        splits: the parent's split file (e.g. the data module's ``split_file``), or the
            assignments (image name -> split) with ``split_seed`` / ``split_ratios``.
        features: feature set name -> (images, dims) array.
        out_dir: where the subset split files and ``index.json`` / ``index.csv`` go.
        setups, n_clusters, rules, seed: see :func:`cluster_subsets`.
        split_seed, split_ratios: the parent split's seed and ratios when ``splits`` is a mapping.

    Returns:
        The result; ``print(result)`` gives the summary.
    """
    names = [item if isinstance(item, str) else item.name for item in data]
    assignments, *_ = _parent(splits, split_seed, split_ratios)
    subsets, report = cluster_subsets(
        names, assignments, features, setups=setups, n_clusters=n_clusters, rules=rules, seed=seed
    )
    index = write_subsets(subsets, splits, out_dir, seed=split_seed, ratios=split_ratios, report=report)
    return AugmentResult(subsets, report, index)
