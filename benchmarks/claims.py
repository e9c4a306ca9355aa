"""Measure four figures stated in benchmarks/RESULTS.md that no other script prints.

    python benchmarks/claims.py [--repeats 5] [--smoke]

1. Sparse anchor matching: (face, anchor) pairs :meth:`AnchorGrid.candidates` hands to
   :func:`match_anchors` for benchmarks/retinaface.py's batch (32 images at 640 x 640, 16,800
   anchors, ~11.7 WIDER-like faces per image) against faces x anchors (dense). A count, not a time.
2. Two-class cross-entropy as the logistic loss of the logit margin (models/detection/loss.py)
   against ``F.cross_entropy`` over 2 classes: forward + backward on the (32, 16,800, 2) logits the
   loss evaluates, summed over that batch's positives and 7 negatives per positive, as the loss does.
3. SMAC's random forest (search/backends/smac.py ``_fast_forest``, fitted inside ``_sequential()``)
   against the facade default (``HyperparameterOptimizationFacade.get_model``): one ``train`` on
   100 random configurations of ``frnas_joint`` with random costs.
4. DPN-68 with architecture 301 against 030: parameter counts of the backbone
   (``dpn_search``) and one SGD step (forward + backward + step) at batch 8, 112 x 112, fp32.

Not measured: the other RESULTS.md figures (see the other scripts), any GPU time, the accuracy of
the models, and the full FaceID step (the margin head, ~2% of it, is left out of 4). The hard
negatives of 2 are chosen at random among the background anchors (which ones does not change
the cost). Times are medians of ``--repeats`` runs after one warm-up, on the current device (CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the repository's ``search`` package before benchmarks/ goes first (benchmarks/search.py would shadow it)
from facenas.models.detection.anchors import AnchorGrid, match_anchors
from facenas.models.recognition import dpn_search
from facenas.search.backends.smac import _fast_forest, _sequential
from facenas.search.spaces import load_space

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retinaface import wider_like_batch
from timing import median_time


def batch_and_matches(batch: int = 32, size: int = 640):
    grid = AnchorGrid(size, size)
    anchors = grid.anchors()
    targets = wider_like_batch(batch, size, 12)
    matches = match_anchors(anchors, targets["boxes"], targets["image"], batch, targets["ignore"], grid=grid)
    return grid, anchors, targets, matches


def claim_pairs(grid, anchors, targets) -> tuple[str, str, str]:
    faces, images = len(targets["boxes"]), int(targets["image"].max()) + 1
    face, _ = grid.candidates(targets["boxes"].float(), min_iou=0.5 / 2 + 0.05)  # match_anchors' default neg_iou
    dense = faces * len(anchors)
    return (
        "~118k pairs instead of 6.3M",
        f"{len(face):,} pairs instead of {dense:,}",
        f"{faces} faces ({faces / images:.1f}/image) x {len(anchors):,} anchors; {dense / len(face):.0f}x fewer",
    )


def claim_cross_entropy(matches, repeats: int) -> tuple[str, str, str]:
    labels = matches.labels
    pos = labels == 1
    g = torch.Generator().manual_seed(2)
    # 7 negatives per positive in each image, at random among the background anchors
    score = torch.rand(labels.shape, generator=g).masked_fill(labels != 0, -1.0)
    num_neg = torch.minimum(7 * pos.sum(1), (labels == 0).sum(1))
    hardest = score.topk(int(num_neg.max()), dim=1).indices
    neg = torch.zeros_like(pos).scatter_(1, hardest, torch.arange(hardest.shape[1])[None, :] < num_neg[:, None])
    used = pos | neg
    logits = torch.randn(*labels.shape, 2, generator=g, requires_grad=True)

    def margin() -> None:
        ce = F.binary_cross_entropy_with_logits(logits[..., 1] - logits[..., 0], pos.float(), reduction="none")
        ce[used].sum().backward()

    def softmax() -> None:
        ce = F.cross_entropy(logits.reshape(-1, 2), pos.reshape(-1).long(), reduction="none").reshape(labels.shape)
        ce[used].sum().backward()

    t_margin, t_softmax = median_time(margin, repeats), median_time(softmax, repeats)
    return (
        "15x cheaper (margin logistic vs cross_entropy)",
        f"{t_softmax / t_margin:.1f}x",
        (
            f"{tuple(logits.shape)} logits, {int(used.sum()):,} used; fwd+bwd {1e3 * t_margin:.1f} ms vs "
            f"{1e3 * t_softmax:.1f} ms"
        ),
    )


def claim_forest(repeats: int, points: int = 100) -> tuple[str, str, str]:
    from smac import HyperparameterOptimizationFacade, Scenario

    space = load_space("frnas_joint")
    X = np.array([config.get_array() for config in space.sample_configuration(points)])
    Y = np.random.default_rng(0).uniform(0.1, 1.0, size=(points, 1))
    with tempfile.TemporaryDirectory(prefix="facenas-smac-") as outdir:
        scenario = Scenario(
            space,
            name="facenas",
            output_directory=Path(outdir),
            deterministic=True,
            objectives="cost",
            n_trials=1000,
            seed=0,
        )
        default, fast = HyperparameterOptimizationFacade.get_model(scenario), _fast_forest(scenario)
        t_default = median_time(lambda: default.train(X, Y), repeats)
        with _sequential():
            t_fast = median_time(lambda: fast.train(X, Y), repeats)
    return (
        "~100x faster (1.1 s -> 0.01 s per fit on 100 points)",
        f"{t_default / t_fast:.0f}x",
        f"{t_default:.3f} s -> {t_fast:.4f} s per fit",
    )


def sgd_step(model: torch.nn.Module, images: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = model(images).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def claim_dpn(repeats: int, variant: str = "68", batch: int = 8, size: int = 112) -> tuple[str, str, str]:
    images = torch.randn(batch, 3, size, size)
    results = {}
    for arch in ("301", "030"):
        model = dpn_search(arch, variant).train()
        params = sum(p.numel() for p in model.parameters())
        results[arch] = (params, median_time(sgd_step(model, images), repeats))
    (p301, t301), (p030, t030) = results["301"], results["030"]
    return (
        "DPN-68-301 (54M) 5-6x slower than 030 (11.8M)",
        f"{t301 / t030:.1f}x slower",
        f"{p301 / 1e6:.1f}M vs {p030 / 1e6:.1f}M params; SGD step batch {batch} at {size}^2 {t301:.2f} s vs "
        f"{t030:.2f} s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--smoke", action="store_true", help="every measurement once at a tiny size: checks the script, times nothing"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.smoke:
        args.repeats = 1
    grid, anchors, targets, matches = batch_and_matches(*((2, 128) if args.smoke else ()))
    rows = [
        claim_pairs(grid, anchors, targets),
        claim_cross_entropy(matches, args.repeats),
        claim_forest(args.repeats, *((10,) if args.smoke else ())),
        claim_dpn(args.repeats, *(("small", 2, 32) if args.smoke else ())),
    ]
    print(f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} runs")
    print("| claim | measured | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
