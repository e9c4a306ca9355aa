"""HyperFD's dataset augmentation by clustering: the nine set-ups, the filtering rules, and the
subset split files the data modules read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from facenas.datamodules import DataError, load_or_create_split
from facenas.datamodules.detection import FaceDetectionDataModule
from facenas.datamodules.splits import read_split_file, write_subset_split
from facenas.hyperfd.table.augment import SETUPS, Rules, SubDataset, augment, cluster_subsets, write_subsets


@pytest.fixture(autouse=True)
def _one_thread():
    """One OpenMP thread: on these tiny inputs t-SNE's and K-Means' threads only spin, and on a busy
    machine that made the t-SNE tests 20-80 times slower."""
    with threadpool_limits(1):
        yield


def _pattern(n: int) -> list[str]:
    """6:1:3 in every run of ten: train x6, val, test x3."""
    cycle = ("train",) * 6 + ("val",) + ("test",) * 3
    return [cycle[i % 10] for i in range(n)]


def _blobs(sizes=(60, 60, 60), centers=None, dims=8, seed=0, splits=None):
    """Gaussian blobs (std 1) far apart; names img000..; splits 6:1:3 inside every blob unless given."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = [40.0 * np.eye(dims)[i] for i in range(len(sizes))]
    rows, names, assigned, blobs, start = [], [], {}, [], 0
    for b, size in enumerate(sizes):
        rows.append(rng.normal(size=(size, dims)) + np.asarray(centers[b]))
        blob = [f"img{i:03d}" for i in range(start, start + size)]
        parts = splits[b] if splits is not None else _pattern(size)
        assigned.update(zip(blob, parts))
        names += blob
        blobs.append(tuple(blob))
        start += size
    return names, assigned, np.concatenate(rows), blobs


@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_setup_recovers_well_separated_blobs(setup):
    names, splits, x, blobs = _blobs()
    subsets, report = cluster_subsets(names, splits, {"toy": x}, setups=(setup,), n_clusters=(3,))
    if setup == "dbscan_cosine":
        # eps=10 as written is beyond any cosine distance (<= 2): one cluster of everything, too large
        assert subsets == [] and report.candidates == 1 and report.dropped["too_large"] == 1
        return
    assert sorted(s.names for s in subsets) == sorted(blobs)
    for s in subsets:
        assert s.features == "toy" and s.setup == setup and s.counts == {"train": 36, "val": 6, "test": 18}
        assert s.n_clusters == (None if setup.startswith("dbscan") else 3)
        assert all(splits[n] == p for n, p in zip(s.names, _pattern(60)))  # original splits kept


def test_kmeans_k3_is_the_blobs_with_their_splits_and_all_k_run():
    names, splits, x, blobs = _blobs()
    subsets, report = cluster_subsets(names, splits, {"toy": x}, setups=("kmeans",))
    assert report.runs == 4 and report.candidates == 2 + 3 + 5 + 7
    # k=2 splits off one blob whole, which k=3 finds again (a duplicate): all three blobs are kept once
    assert set(blobs) <= {s.names for s in subsets} and report.dropped["duplicate"] >= 1
    assert len({s.names for s in subsets}) == len(subsets) == report.kept
    assert "KMeans(" in subsets[0].parameters and "max_iter=2000" in subsets[0].parameters
    # deterministic: the same call gives the same sub-datasets
    assert cluster_subsets(names, splits, {"toy": x}, setups=("kmeans",))[0] == subsets


def test_duplicate_image_sets_are_dropped_keeping_the_first():
    names, splits, x, blobs = _blobs()
    subsets, report = cluster_subsets(
        names, splits, {"a": x, "b": x * 2}, setups=("kmeans", "agglomerative_ward"), n_clusters=(3,)
    )
    assert [s.setup for s in subsets] == ["kmeans"] * 3 and {s.features for s in subsets} == {"a"}
    assert report.dropped["duplicate"] == 9 and report.kept == 3 and report.candidates == 12


def test_size_rules_drop_too_small_and_too_large_clusters():
    # A (10 images) next to B (145), C (25) far away: k=2 gives A+B (155 > 180 - 30) and C (25 < 30)
    centers = [np.zeros(8), 12.0 * np.eye(8)[0], 100.0 * np.eye(8)[1]]
    names, splits, x, _ = _blobs(sizes=(10, 145, 25), centers=centers)
    subsets, report = cluster_subsets(names, splits, {"toy": x}, setups=("kmeans",), n_clusters=(2,))
    assert subsets == [] and report.bounds == (30, 150)
    assert report.dropped == {"too_large": 1, "too_small": 1}
    # k=3: the 145-image blob is kept, the 10- and 25-image blobs are too small
    subsets, report = cluster_subsets(names, splits, {"toy": x}, setups=("kmeans",), n_clusters=(3,))
    assert [s.size for s in subsets] == [145] and report.dropped == {"too_small": 2}


def test_balance_rule_drops_clusters_whose_split_is_off():
    # the parent is exactly 6:1:3 (108/18/54); blob 1 has no val, blob 2 is 20% val
    parts = [_pattern(60), ["train"] * 60, ["train"] * 12 + ["val"] * 12 + ["test"] * 36]
    names, splits, x, blobs = _blobs(splits=parts)
    subsets, report = cluster_subsets(names, splits, {"toy": x}, setups=("kmeans",), n_clusters=(3,))
    assert [s.names for s in subsets] == [blobs[0]] and report.dropped == {"unbalanced": 2}


def test_rules_bounds_and_fractions():
    rules = Rules()
    assert rules.size_bounds(1633) == (82, 1551)  # the WIDER subset here
    assert rules.size_bounds(16097) == (805, 15292)  # HyperFD's 800 at each end, as a fraction
    assert rules.size_bounds(100) == (30, 70)  # the floor for small parents
    parent = {"train": 600, "val": 100, "test": 300}
    assert rules.reject({"train": 30, "val": 5, "test": 14}, parent) == "too_small"
    assert rules.reject({"train": 30, "val": 5, "test": 15}, parent) is None
    assert rules.reject({"train": 600, "val": 51, "test": 300}, parent) == "too_large"
    assert rules.reject({"train": 90, "val": 15, "test": 45}, parent) is None
    assert rules.reject({"train": 100, "val": 23, "test": 27}, parent) == "unbalanced"  # val 0.153 > 0.15
    assert rules.reject({"train": 85, "val": 10, "test": 5}, parent) == "unbalanced"  # test 0.05 < 0.15
    assert Rules(max_deviation=10).reject({"train": 50, "val": 0, "test": 50}, parent) == "unbalanced"
    with pytest.raises(ValueError, match="min_fraction"):
        Rules(min_fraction=0.5)


def test_tsne_on_few_samples_and_bad_input_name_the_culprit():
    names, splits, x, blobs = _blobs(sizes=(6, 6), dims=4)
    subsets, _ = cluster_subsets(
        names, splits, {"toy": x}, setups=("pca_tsne_kmeans",), n_clusters=(2,), rules=Rules(min_images=1)
    )
    assert len(subsets) <= 2  # runs: perplexity is kept below the 12 samples
    with pytest.raises(ValueError, match=r"feature set 'bad' has shape \(11, 4\)"):
        cluster_subsets(names, splits, {"bad": x[:11]})
    with pytest.raises(ValueError, match="unknown clustering set-up 'spectral'"):
        cluster_subsets(names, splits, {"toy": x}, setups=("spectral",))
    with pytest.raises(ValueError, match="image 'img011' has no split"):
        cluster_subsets(names, {n: splits[n] for n in names[:11]}, {"toy": x})
    with pytest.raises(ValueError, match="n_clusters 12 must be an integer from 2 to 11"):
        cluster_subsets(names, splits, {"toy": x}, n_clusters=(2, 12))


def test_augment_writes_subset_files_and_an_index(tmp_path):
    names, splits, x, blobs = _blobs()
    result = augment(names, splits, {"toy": x}, tmp_path / "out", setups=("kmeans",), n_clusters=(3,))
    assert "kept 3 sub-datasets" in str(result) and "kmeans 3" in str(result)
    index = json.loads(result.index.read_text())
    assert index["seed"] == 0 and index["ratios"] == [6.0, 1.0, 3.0] and index["report"]["kept"] == 3
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted([r["file"] for r in index["subsets"]] + ["index.csv", "index.json"])  # no image copied
    record = read_split_file(tmp_path / "out" / index["subsets"][0]["file"])
    assert record["subset"] and record["setup"]["setup"] == "kmeans" and record["setup"]["n_clusters"] == 3
    assert tuple(sorted(record["assignments"])) in blobs
    assert all(splits[n] == p for n, p in record["assignments"].items())
    # a later run into the same folder removes the files it no longer lists
    write_subsets(result.subsets[:1], splits, tmp_path / "out")
    assert len(list((tmp_path / "out").glob("toy.*.json"))) == 1
    # a sub-dataset clustered with another split than the parent's is refused
    flipped = {n: ("test" if p == "train" else p) for n, p in splits.items()}
    with pytest.raises(ValueError, match=r"sub-dataset toy.kmeans.k3.c\d was clustered with another split"):
        write_subsets(result.subsets, flipped, tmp_path / "other")


def _data(tmp_path, split_file, seed=0):
    return FaceDetectionDataModule(
        synthetic_images=40,
        synthetic_size=(64, 48),
        synthetic_root=str(tmp_path / "syn"),
        split_file=str(split_file),
        seed=seed,
        num_workers=0,
    )


def test_a_subset_split_file_gives_the_data_module_exactly_the_subset(tmp_path):
    parent_file = tmp_path / "parent.json"
    parent = _data(tmp_path, parent_file)
    parent.setup()
    assignments = read_split_file(parent_file)["assignments"]
    assert len(assignments) == 40
    picked = tuple(sorted(assignments)[:25])
    counts = {s: sum(assignments[n] == s for n in picked) for s in ("train", "val", "test")}
    subset = SubDataset(picked, "toy", "kmeans", 2, 0, "KMeans(n_clusters=2)", counts)
    write_subsets([subset], parent_file, tmp_path / "subsets")
    subset_file = tmp_path / "subsets" / f"{subset.id}.json"

    data = _data(tmp_path, subset_file)
    data.setup()
    got = {s.name: part for part, samples in data.splits.items() for s in samples}
    assert got == {n: assignments[n] for n in picked}
    assert read_split_file(subset_file)["parent"] == str(parent_file)
    # the parent's seed is recorded: another seed is refused, as for any split file
    with pytest.raises(DataError, match="drawn with seed 0"):
        _data(tmp_path, subset_file, seed=1).setup()


def test_ordinary_split_files_still_refuse_missing_samples_subset_files_leave_them_out(tmp_path):
    keys = [f"k{i}" for i in range(20)]
    ordinary = tmp_path / "split.json"
    full = load_or_create_split(ordinary, keys[:10])
    with pytest.raises(DataError, match="split.json: 10 samples are not in the split file"):
        load_or_create_split(ordinary, keys)
    subset = write_subset_split(tmp_path / "sub.json", {k: full[k] for k in keys[:4]}, seed=0, ratios=(6, 1, 3))
    assert load_or_create_split(subset, keys) == {k: full[k] for k in keys[:4]}
    with pytest.raises(DataError, match="sub.json: none of the 2 samples is in this subset split file"):
        load_or_create_split(subset, ["x", "y"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seed": 0, "ratios": [6, 1, 3], "assignments": {"k0": "holdout"}}))
    with pytest.raises(DataError, match="bad.json: 'k0' is assigned to 'holdout'"):
        load_or_create_split(bad, ["k0"])
