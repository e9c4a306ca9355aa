"""Linear probes of a protected attribute on a trained model's last two layers (FR-NAS Table 3):
the lower the held-out accuracy, the less linearly separable the attribute is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class ProbeResult:
    """Held-out accuracy of one layer's probe, next to always guessing the majority class."""

    layer: str
    accuracy: float
    majority: float
    train: int
    test: int


def probe_layers(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    identities: np.ndarray,
    *,
    probe: str = "logistic",
    test_fraction: float = 0.3,
    seed: int = 0,
) -> list[ProbeResult]:
    """Train a probe of ``labels`` on each layer's features and report held-out accuracy.

    The train/held-out split is by identity, so that a probe cannot succeed by recognising
    people it has seen.

    Args:
        features: ``{layer name: (N, D) features}``.
        labels: (N,) attribute class per image (rows with a negative label are left out).
        identities: (N,) identity per image.
        probe: ``logistic`` (logistic regression) or ``mlp`` (one hidden layer of 128).
    """
    if probe not in ("logistic", "mlp"):
        raise ValueError(f"probe must be 'logistic' or 'mlp', got {probe!r}")
    keep = labels >= 0
    labels, identities = labels[keep], identities[keep]
    if len(np.unique(labels)) < 2:
        raise ValueError("the attribute has fewer than two classes among the evaluated images")
    train, test = next(
        GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(labels, labels, identities)
    )
    majority = float(np.mean(labels[test] == np.bincount(labels[train]).argmax()))
    results = []
    for layer, x in features.items():
        x = x[keep]
        classifier = (
            LogisticRegression(max_iter=2000)
            if probe == "logistic"
            else MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, random_state=seed)
        )
        model = make_pipeline(StandardScaler(), classifier).fit(x[train], labels[train])
        results.append(
            ProbeResult(
                layer=layer,
                accuracy=float(model.score(x[test], labels[test])),
                majority=majority,
                train=len(train),
                test=len(test),
            )
        )
    return results


def extract_layers(
    model: Any, loader: Iterable[dict[str, Any]]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Layer N-1 and layer N features of every image a loader yields, from a model whose
    ``features(images)`` returns (pooled backbone features, embeddings), with the batches'
    ``groups`` and ``identities``: the inputs of :func:`probe_layers`."""
    import torch

    from facenas.core.progress import track

    pooled, embedded, labels, identities = [], [], [], []
    with torch.no_grad():
        for batch in track(loader, "extracting features"):
            last_but_one, last = model.features(batch["images"])
            pooled.append(last_but_one.float().cpu().numpy())
            embedded.append(last.float().cpu().numpy())
            labels.append(batch["groups"].numpy())
            identities.append(batch["identities"].numpy())
    layers = {"N-1 (backbone)": np.concatenate(pooled), "N (embedding)": np.concatenate(embedded)}
    return layers, np.concatenate(labels), np.concatenate(identities)
