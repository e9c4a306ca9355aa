"""Deterministic, seeded train/val/test splits, written to a split file and reused.

A split file is JSON: ``{"seed", "ratios", "unit", "assignments": {key: "train" | "val" | "test"}}``
where a key is an image name (detection, or identification split per image) or an identity
(identification split per identity). Once written it is the truth: every later run (every trial
of a study) reads it back instead of drawing again, so all of them see the same split.

A *subset* split file (``"subset": true``, optionally ``"parent"``: the split file it was cut from,
and ``"setup"``: how it was chosen) describes a sub-dataset, e.g. one of HyperFD's clustered
sub-datasets (``facenas/hyperfd/table/augment.py``): the data's samples that are not in it are left out
of every split, and each sample in it keeps the split its parent gave it; the file records the
parent's seed and ratios, so the same seed/ratios check applies. In an ordinary split file a
missing sample stays an error (the data changed under the split).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .records import DataError, DetectionSample, IdentitySample

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (6.0, 1.0, 3.0)  # HyperFD


def _assign(keys: Sequence[str], ratios: Sequence[float], rng: np.random.Generator) -> dict[str, str]:
    """Shuffle ``keys`` and cut them in proportion to ``ratios`` (largest-remainder rounding)."""
    n = len(keys)
    weights = np.asarray(ratios, dtype=float)
    exact = weights / weights.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    order = rng.permutation(n)
    out, start = {}, 0
    for split, count in zip(SPLITS, counts):
        for i in order[start : start + count]:
            out[keys[i]] = split
        start += count
    return out


def make_split(
    keys: Sequence[str],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    strata: Sequence[Hashable] | None = None,
) -> dict[str, str]:
    """Assign every key to train/val/test.

    Args:
        keys: unique names (image names or identities).
        ratios: relative sizes of train, val, test (default 6:1:3).
        seed: the draw's seed; the result depends only on (sorted keys, ratios, seed, strata).
        strata: optional stratum of each key (e.g. its identity); each stratum is split
            separately so that every stratum appears in every split where its size allows.
    """
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, got {list(ratios)}")
    if len(set(keys)) != len(keys):
        raise ValueError("split keys must be unique")
    rng = np.random.default_rng(seed)
    if strata is None:
        return _assign(sorted(keys), ratios, rng)
    groups: dict[Hashable, list[str]] = defaultdict(list)
    for key, stratum in zip(keys, strata):
        groups[stratum].append(key)
    out: dict[str, str] = {}
    for stratum in sorted(groups, key=str):
        out.update(_assign(sorted(groups[stratum]), ratios, rng))
    return out


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_split_file(path: str | Path) -> dict:
    """Read and check the split file at ``path``.

    Returns its record: ``seed``, ``ratios`` (floats), ``unit``, ``assignments``, ``subset`` (bool)
    and, when present, ``parent`` and ``setup``. A file that is not JSON, lacks ``assignments`` or
    assigns a key to anything but train/val/test is a :class:`DataError` naming the file.
    """
    try:
        data = json.loads(Path(path).read_text())
        assignments = data["assignments"]
        if not isinstance(assignments, dict):
            raise TypeError("assignments is not a mapping")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"not a facenas split file ({exc})", path) from None
    bad = next(((k, v) for k, v in assignments.items() if v not in SPLITS), None)
    if bad is not None:
        raise DataError(f"{bad[0]!r} is assigned to {bad[1]!r}, not one of {', '.join(SPLITS)}", path)
    record = {
        "seed": data.get("seed"),
        "ratios": [float(r) for r in data.get("ratios") or []],
        "unit": data.get("unit", "image"),
        "assignments": assignments,
        "subset": bool(data.get("subset", False)),
    }
    for key in ("parent", "setup"):
        if key in data:
            record[key] = data[key]
    return record


def write_subset_split(
    path: str | Path,
    assignments: Mapping[str, str],
    *,
    seed: int,
    ratios: Sequence[float],
    unit: str = "image",
    parent: str | None = None,
    setup: Mapping | str | None = None,
) -> Path:
    """Write a subset split file (see the module docstring): ``assignments`` are the sub-dataset's
    keys with their parent's splits; ``seed`` and ``ratios`` are the parent's, so a data module
    with the parent's seed and ratios reads it."""
    bad = next(((k, v) for k, v in assignments.items() if v not in SPLITS), None)
    if bad is not None:
        raise ValueError(f"{bad[0]!r} is assigned to {bad[1]!r}, not one of {', '.join(SPLITS)}")
    record: dict = {"seed": seed, "ratios": [float(r) for r in ratios], "unit": unit, "subset": True}
    if parent is not None:
        record["parent"] = parent
    if setup is not None:
        record["setup"] = setup
    record["assignments"] = dict(assignments)
    _atomic_write(Path(path), json.dumps(record, indent=1, sort_keys=True))
    return Path(path)


def load_or_create_split(
    path: str | Path | None,
    keys: Sequence[str],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    unit: str = "image",
    strata: Sequence[Hashable] | None = None,
) -> dict[str, str]:
    """Read the split file at ``path`` if it exists, else draw a split and write it there.

    A file drawn with another seed or other ratios is an error (reusing it would silently give
    another split than the one asked for), and so is a key missing from it (the data changed
    under the split); keys in the file but not in ``keys`` are ignored (samples that were
    dropped as bad). A subset split file instead leaves out the keys it lacks: the result then
    holds only the keys of the sub-dataset (none of them present is an error: the wrong data).
    """
    if path is not None and Path(path).is_file():
        record = read_split_file(path)
        assignments = record["assignments"]
        drawn = (record["seed"], record["ratios"])
        if drawn != (seed, [float(r) for r in ratios]):
            raise DataError(
                f"the split file was drawn with seed {drawn[0]} and ratios {drawn[1]}, not seed {seed} and "
                f"ratios {[float(r) for r in ratios]}; delete it, or give another split_file",
                path,
            )
        if record["subset"]:
            kept = {k: assignments[k] for k in keys if k in assignments}
            if keys and not kept:
                raise DataError(
                    f"none of the {len(keys)} samples is in this subset split file (first sample: {keys[0]!r}); "
                    "it was cut from other data",
                    path,
                )
            return kept
        missing = [k for k in keys if k not in assignments]
        if missing:
            raise DataError(
                f"{len(missing)} samples are not in the split file (first: {missing[0]!r}); "
                "delete it to draw a new split",
                path,
            )
        return {k: assignments[k] for k in keys}
    assignments = make_split(keys, ratios=ratios, seed=seed, strata=strata)
    if path is not None:
        record = {"seed": seed, "ratios": list(ratios), "unit": unit, "assignments": assignments}
        _atomic_write(Path(path), json.dumps(record, indent=1, sort_keys=True))
    return assignments


def split_detection(
    samples: Sequence[DetectionSample],
    path: str | Path | None = None,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> dict[str, list[DetectionSample]]:
    """Split detection samples by image name (see :func:`load_or_create_split`); with a subset
    split file, the samples not in it are in no split."""
    assignments = load_or_create_split(path, [s.name for s in samples], ratios=ratios, seed=seed, unit="image")
    out: dict[str, list[DetectionSample]] = {k: [] for k in SPLITS}
    for sample in samples:
        if sample.name in assignments:
            out[assignments[sample.name]].append(sample)
    return out


def split_identities(
    samples: Sequence[IdentitySample],
    path: str | Path | None = None,
    *,
    by: str = "identity",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> dict[str, list[IdentitySample]]:
    """Split identification samples.

    Args:
        by: ``"identity"``: whole identities go to one split (open-set evaluation);
            ``"image"``: each identity's images are split in the given ratios (closed set: every
            identity is trained on and evaluated).
    """
    if by not in ("identity", "image"):
        raise ValueError(f"by must be 'identity' or 'image', got {by!r}")
    if by == "identity":
        identities = sorted({s.identity for s in samples})
        assignments = load_or_create_split(path, identities, ratios=ratios, seed=seed, unit="identity")
        key = lambda s: s.identity  # noqa: E731
    else:
        # keyed by identity/file name, so that moving the data folder keeps the split valid
        key = lambda s: f"{s.identity}/{Path(s.image).name}"  # noqa: E731
        assignments = load_or_create_split(
            path,
            [key(s) for s in samples],
            ratios=ratios,
            seed=seed,
            unit="image",
            strata=[s.identity for s in samples],
        )
    out: dict[str, list[IdentitySample]] = {k: [] for k in SPLITS}
    for sample in samples:
        if key(sample) in assignments:  # a subset split file leaves the others out
            out[assignments[key(sample)]].append(sample)
    return out
