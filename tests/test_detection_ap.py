"""AP@50 with MMDetection VOC semantics: the vectorised core against a direct per-detection
loop, hand-worked cases, the torchmetrics Metric, and real WIDER FACE annotations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import facenas.callbacks.detection_ap as ap_module
from facenas.callbacks import DetectionAveragePrecision, average_precision, evaluate_detections
from facenas.datamodules.detection import read_wider


def reference_ap(preds, gts, iou_thr=0.5, min_size=0.0, scales=None):
    """MMDetection's tpfp_default + average_precision('area'), written as the plain loop."""
    records, num_gt = [], 0
    for i, ((db, ds), (gb, gi)) in enumerate(zip(preds, gts)):
        s = 1.0 if scales is None else scales[i]
        gsize = np.sqrt(np.clip(gb[:, 2] - gb[:, 0], 0, None) * np.clip(gb[:, 3] - gb[:, 1], 0, None)) * s
        gignore = gi | (gsize < min_size)
        num_gt += int((~gignore).sum())
        covered = np.zeros(len(gb), bool)
        for d in np.argsort(-ds, kind="stable"):
            b = db[d]
            best = -1.0
            if len(gb):
                lt, rb = np.maximum(b[:2], gb[:, :2]), np.minimum(b[2:], gb[:, 2:])
                inter = np.clip(rb - lt, 0, None).prod(1)
                iou = inter / ((b[2:] - b[:2]).prod() + (gb[:, 2:] - gb[:, :2]).prod(1) - inter)
                j = int(np.argmax(iou))
                best = iou[j]
            if best >= iou_thr:
                if gignore[j]:
                    continue
                records.append((ds[d], not covered[j]))
                covered[j] = True
            elif np.sqrt((b[2] - b[0]) * (b[3] - b[1])) * s >= min_size:
                records.append((ds[d], False))
    rec = np.array(records, dtype=float).reshape(-1, 2)
    tp = rec[np.argsort(-rec[:, 0], kind="stable"), 1]
    tpc, fpc = np.cumsum(tp), np.cumsum(1 - tp)
    recall = tpc / max(num_gt, 1e-12)
    precision = tpc / np.maximum(tpc + fpc, 1e-12)
    mrec, mpre = np.r_[0, recall, 1], np.r_[0, precision, 0]
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = max(mpre[k], mpre[k + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum()) if num_gt else 0.0, num_gt, len(rec)


def random_set(rng, images=12):
    preds, gts = [], []
    for _ in range(images):
        g = int(rng.integers(0, 8))
        xy = rng.uniform(0, 200, (g, 2))
        gb = np.c_[xy, xy + rng.uniform(2, 60, (g, 2))]
        gi = rng.random(g) < 0.2
        d = int(rng.integers(0, 20))
        src = gb[rng.integers(0, g, d)] if g else np.c_[rng.uniform(0, 200, (d, 2)), np.zeros((d, 2))]
        if not g:
            src[:, 2:] = src[:, :2] + rng.uniform(2, 60, (d, 2))
        db = src + rng.normal(0, 4, (d, 4))
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        preds.append((db, rng.random(d).round(2)))  # rounded: many score ties
        gts.append((gb, gi))
    return preds, gts


def as_torch(pairs):
    return [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in pairs]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("min_size", [0.0, 20.0])
def test_matches_reference_loop(seed, min_size):
    rng = np.random.default_rng(seed)
    preds, gts = random_set(rng)
    sizes = [(int(rng.integers(100, 900)), int(rng.integers(100, 900))) for _ in gts]
    scales = [720 / min(s) for s in sizes]
    got = evaluate_detections(as_torch(preds), as_torch(gts), min_size=min_size, image_sizes=sizes, short_side=720)
    want, num_gt, num_det = reference_ap(preds, gts, min_size=min_size, scales=scales)
    assert got.ap50 == pytest.approx(want, abs=1e-12)
    assert (got.num_gt, got.num_det) == (num_gt, num_det)


def test_pair_chunking_does_not_change_the_result(monkeypatch):
    preds, gts = random_set(np.random.default_rng(99), images=30)
    full = evaluate_detections(as_torch(preds), as_torch(gts))
    monkeypatch.setattr(ap_module, "_PAIR_CHUNK", 7)  # forces dozens of chunks, some a single detection
    assert evaluate_detections(as_torch(preds), as_torch(gts)) == full


def test_hand_worked_example():
    # two faces; detections: a hit (0.9), a duplicate of it (0.8), a miss (0.7), the second face (0.6)
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    det = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [20, 20, 30, 31]], dtype=torch.float)
    result = evaluate_detections([(det, torch.tensor([0.9, 0.8, 0.7, 0.6]))], [(gt, torch.tensor([False, False]))])
    # TP FP FP TP: precision 1, .5, .33, .5 at recall .5, .5, .5, 1 -> envelope 1 (to .5), .5 (to 1)
    assert result.ap50 == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert (result.num_gt, result.num_det, result.recall) == (2, 4, 1.0)


def test_ignored_faces_neither_help_nor_hurt():
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 42, 42]], dtype=torch.float)
    ignore = torch.tensor([False, True, False])
    det = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 71, 71]], dtype=torch.float)
    scores = torch.tensor([0.5, 0.9, 0.8])
    # min_size 5: the 2-px face is ignored; the 1-px unmatched detection is ignored, not a FP
    result = evaluate_detections([(det, scores)], [(gt, ignore)], min_size=5)
    assert (result.ap50, result.num_gt, result.num_det) == (1.0, 1, 1)
    # without min_size the tiny detection is a FP ranked above the hit, the tiny face is missed
    result = evaluate_detections([(det, scores)], [(gt, ignore)])
    assert result.num_gt == 2 and result.num_det == 2
    assert result.ap50 == pytest.approx(0.5 * 0.5)


def test_short_side_scaling_moves_the_size_threshold():
    gt = torch.tensor([[0, 0, 30, 30]], dtype=torch.float)
    det = (gt.clone(), torch.tensor([1.0]))
    keep = evaluate_detections(
        [det], [(gt, torch.tensor([False]))], min_size=36, image_sizes=[(360, 500)], short_side=720
    )
    drop = evaluate_detections(
        [det], [(gt, torch.tensor([False]))], min_size=36, image_sizes=[(1440, 2000)], short_side=720
    )
    assert keep.num_gt == 1 and drop.num_gt == 0  # 30 px -> 60 px at x2, -> 15 px at x0.5


def test_average_precision_without_ground_truth_is_undefined():
    ap, recall = average_precision(torch.tensor([0.9]), torch.tensor([False]), 0)
    assert math.isnan(ap) and math.isnan(recall)


def batch_of(preds, gts, labels):
    return (
        [{"boxes": torch.tensor(p[0]), "scores": torch.tensor(p[1])} for p in preds],
        [
            {"boxes": torch.tensor(g[0]), "ignore": torch.tensor(g[1]), "attributes": {"gender": lab}}
            for g, lab in zip(gts, labels)
        ],
    )


def test_metric_accumulates_batches_like_one_evaluation():
    rng = np.random.default_rng(5)
    preds, gts = random_set(rng, images=20)
    labels = [[["female", "male", None][int(k)] for k in rng.integers(0, 3, len(g[0]))] for g in gts]
    metric = DetectionAveragePrecision(min_size=0, attributes={"gender": ["female", "male"]}, min_group_faces=1)
    for lo in range(0, 20, 6):
        metric.update(*batch_of(preds[lo : lo + 6], gts[lo : lo + 6], labels[lo : lo + 6]))
    out = metric.compute()
    assert out["ap50"].item() == pytest.approx(evaluate_detections(as_torch(preds), as_torch(gts)).ap50)
    want, faces = {}, {}
    for group in ("female", "male"):
        outside = [(g[0], g[1] | np.array([lab != group for lab in labs], dtype=bool)) for g, labs in zip(gts, labels)]
        result = evaluate_detections(as_torch(preds), as_torch(outside))
        want[group], faces[group] = result.ap50, result.num_gt
        assert out[f"gender={group}"].item() == pytest.approx(want[group])
    assert out["disparity:gender"].item() == pytest.approx(abs(want["female"] - want["male"]))
    # a group with fewer counted faces than the minimum leaves no pair to compare
    few = DetectionAveragePrecision(
        min_size=0, attributes={"gender": ["female", "male"]}, min_group_faces=1 + min(faces.values())
    )
    few.update(*batch_of(preds, gts, labels))
    assert math.isnan(few.compute()["disparity:gender"].item())


def test_real_wider_ground_truth_scores_perfectly_against_itself(wider_val):
    gt_file, images = wider_val
    samples = read_wider(gt_file, images)
    preds = [(torch.from_numpy(s.boxes), torch.linspace(1, 0.5, len(s))) for s in samples]
    truth = [(torch.from_numpy(s.boxes), torch.from_numpy(s.ignore)) for s in samples]
    result = evaluate_detections(preds, truth)
    assert result.ap50 == pytest.approx(1.0) and result.recall == pytest.approx(1.0)
    assert result.num_gt == sum(int((~s.ignore).sum()) for s in samples) == 5082
    sizes = [(s.height, s.width) for s in samples]
    hyperfd = evaluate_detections(preds, truth, image_sizes=sizes, short_side=720, min_size=36)
    assert 0 < hyperfd.num_gt < result.num_gt and hyperfd.ap50 == pytest.approx(1.0)
    # dropping every other true face halves the recall
    half = [(b[::2], s[::2]) for b, s in preds]
    assert evaluate_detections(half, truth).recall == pytest.approx(0.5, abs=0.05)
