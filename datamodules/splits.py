"""Deterministic, seeded train/val/test splits, written to a split file and reused.

A split file is JSON: ``{"seed", "ratios", "unit", "assignments": {key: "train" | "val" | "test"}}``
where a key is an image name (detection, or identification split per image) or an identity
(identification split per identity). Once written it is the truth: every later run (every trial
of a study) reads it back instead of drawing again, so all of them see the same split.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Hashable, Sequence
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
    dropped as bad).
    """
    if path is not None and Path(path).is_file():
        try:
            data = json.loads(Path(path).read_text())
            assignments = data["assignments"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"not a facenas split file ({exc})", path) from None
        drawn = (data.get("seed"), [float(r) for r in data.get("ratios") or []])
        if drawn != (seed, [float(r) for r in ratios]):
            raise DataError(
                f"the split file was drawn with seed {drawn[0]} and ratios {drawn[1]}, not seed {seed} and "
                f"ratios {[float(r) for r in ratios]}; delete it, or give another split_file",
                path,
            )
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
    """Split detection samples by image name (see :func:`load_or_create_split`)."""
    assignments = load_or_create_split(path, [s.name for s in samples], ratios=ratios, seed=seed, unit="image")
    out: dict[str, list[DetectionSample]] = {k: [] for k in SPLITS}
    for sample in samples:
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
        out[assignments[key(sample)]].append(sample)
    return out
