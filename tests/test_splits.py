"""Seeded train/val/test splits that are written once and reused."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from facenas.datamodules import (
    DataError,
    IdentitySample,
    load_or_create_split,
    make_split,
    split_identities,
)


def test_default_ratios_are_hyperfd_6_1_3_and_deterministic():
    keys = [f"img{i:03d}" for i in range(200)]
    a = make_split(keys, seed=3)
    assert Counter(a.values()) == {"train": 120, "val": 20, "test": 60}
    assert make_split(list(reversed(keys)), seed=3) == a  # input order does not matter
    assert make_split(keys, seed=4) != a


def test_rounding_keeps_every_key():
    split = make_split([str(i) for i in range(7)], ratios=(6, 1, 3))
    assert len(split) == 7 and Counter(split.values()) == {"train": 4, "test": 2, "val": 1}


def test_split_file_is_written_once_and_reused(tmp_path):
    path = tmp_path / "split.json"
    keys = [f"k{i}" for i in range(50)]
    first = load_or_create_split(path, keys, seed=1)
    record = json.loads(path.read_text())
    assert record["seed"] == 1 and record["assignments"] == first
    assert load_or_create_split(path, keys, seed=1) == first  # read back, not drawn again
    # a file drawn with another seed or other ratios is an error naming it, never silently reused
    with pytest.raises(DataError, match=r"split.json: the split file was drawn with seed 1 .* not seed 99"):
        load_or_create_split(path, keys, seed=99)
    with pytest.raises(DataError, match=r"ratios \[6.0, 1.0, 3.0\], not seed 1 and ratios \[8.0, 1.0, 1.0\]"):
        load_or_create_split(path, keys, seed=1, ratios=(8, 1, 1))
    # samples dropped since are fine; new samples are an error naming the file
    assert load_or_create_split(path, keys[:10], seed=1) == {k: first[k] for k in keys[:10]}
    with pytest.raises(DataError, match="split.json: 1 samples are not in the split file"):
        load_or_create_split(path, keys + ["new"], seed=1)


def _identities(n_ids=20, per=10):
    return [IdentitySample(image=f"/data/p{i}/{k}.jpg", identity=f"p{i}") for i in range(n_ids) for k in range(per)]


def test_identity_split_keeps_identities_whole(tmp_path):
    parts = split_identities(_identities(), tmp_path / "s.json", by="identity", seed=0)
    ids = {name: {s.identity for s in part} for name, part in parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (12, 2, 6)


def test_image_split_puts_every_identity_in_every_split(tmp_path):
    path = tmp_path / "s.json"
    parts = split_identities(_identities(), path, by="image", seed=0)
    for part in parts.values():
        assert {s.identity for s in part} == {f"p{i}" for i in range(20)}
    assert [len(parts[k]) for k in ("train", "val", "test")] == [120, 20, 60]
    # keys do not depend on where the data folder lives
    moved = [IdentitySample(image=s.image.replace("/data/", "/elsewhere/"), identity=s.identity) for s in _identities()]
    again = split_identities(moved, path, by="image", seed=0)
    assert [s.image.split("/")[-2:] for s in again["val"]] == [s.image.split("/")[-2:] for s in parts["val"]]
