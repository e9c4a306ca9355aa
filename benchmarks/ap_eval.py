"""AP@50 evaluation at WIDER FACE validation scale: 3,226 images x 1,000 detections.

The input is synthetic but shaped like WIDER val: per-image face counts with WIDER's heavy tail
(median ~5, mean ~12, a few images with hundreds), log-normal face sizes, ~4% ignore boxes, and
1,000 detections per image (jittered copies of faces with high scores, the rest scattered with
low scores). It times facenas's vectorised matcher + VOC all-point AP and faster-coco-eval's
AP50 (COCO protocol: 101-point interpolation, crowd regions) on the same input.

    python benchmarks/ap_eval.py [--images 3226] [--dets 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facenas.callbacks.detection_ap import evaluate_detections


def make_input(num_images: int, dets_per_image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(num_images):
        w, h = 1024, int(rng.integers(600, 1400))
        n = int(min(rng.geometric(1 / 12), 1000))
        size = np.clip(rng.lognormal(np.log(25), 0.9, n), 4, 600)
        xy = rng.uniform(0, 1, (n, 2)) * np.array([w, h]) - size[:, None] / 2
        gt = np.concatenate([xy, xy + size[:, None] * np.array([1, 1.25])], 1)
        ignore = rng.random(n) < 0.04
        found = rng.random(n) < 0.85
        near = gt[found] + rng.normal(0, 0.08, (int(found.sum()), 4)) * size[found, None]
        near_scores = rng.beta(5, 1.5, len(near))
        k = max(dets_per_image - len(near), 0)
        loose_size = np.clip(rng.lognormal(np.log(20), 0.8, k), 3, 400)
        loose_xy = rng.uniform(0, 1, (k, 2)) * np.array([w, h])
        loose = np.concatenate([loose_xy, loose_xy + loose_size[:, None]], 1)
        boxes = np.concatenate([near, loose])[:dets_per_image]
        scores = np.concatenate([near_scores, rng.beta(1, 6, k)])[:dets_per_image]
        preds.append((boxes, scores))
        gts.append((gt, ignore))
    return preds, gts


def time_facenas(preds, gts, repeat: int):
    tp = [(torch.from_numpy(b), torch.from_numpy(s)) for b, s in preds]
    tg = [(torch.from_numpy(b), torch.from_numpy(i)) for b, i in gts]
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = evaluate_detections(tp, tg)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def time_faster_coco_eval(preds, gts, repeat: int):
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, dets = [], [], []
    for i, ((boxes, scores), (gt, ignore)) in enumerate(zip(preds, gts)):
        images.append({"id": i, "width": 1024, "height": 1400})
        for b, crowd in zip(gt, ignore):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        dets.extend(
            {"image_id": i, "category_id": 1, "bbox": bb.tolist(), "score": float(s)} for bb, s in zip(xywh, scores)
        )
    dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}
    totals, evals, ap = [], [], None
    for _ in range(repeat):
        start = time.perf_counter()
        coco = COCO(dataset)
        res = coco.loadRes(dets)
        loaded = time.perf_counter()
        ev = COCOeval_faster(coco, res, "bbox", print_function=lambda *a, **k: None)
        ev.params.maxDets = [1000, 1000, 1000]
        ev.params.iouThrs = np.array([0.5])  # only AP@50, as facenas computes
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        ap = float(ev.stats[1])  # AP at IoU 0.50, area all, maxDets[2]
        end = time.perf_counter()
        totals.append(end - start)
        evals.append(end - loaded)
    return statistics.median(totals), statistics.median(evals), ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3226)
    parser.add_argument("--dets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    preds, gts = make_input(args.images, args.dets)
    n_det = sum(len(s) for _, s in preds)
    n_gt = sum(len(g) for g, _ in gts)
    print(
        f"input: {args.images} images, {n_det:,} detections, {n_gt:,} faces ({torch.get_num_threads()} torch threads)"
    )
    ours, result = time_facenas(preds, gts, args.repeat)
    theirs, theirs_eval, coco_ap = time_faster_coco_eval(preds, gts, args.repeat)
    print()
    print("| implementation | protocol | AP@50 | median time (s) |")
    print("|---|---|---|---|")
    print(f"| facenas `evaluate_detections` | MMDetection VOC, all-point | {result.ap50:.4f} | {ours:.2f} |")
    print(f"| faster-coco-eval, load + evaluate | COCO, 101-point, crowd | {coco_ap:.4f} | {theirs:.2f} |")
    print(f"| faster-coco-eval, evaluate only | COCO, 101-point, crowd | {coco_ap:.4f} | {theirs_eval:.2f} |")
    print(
        f"\nfacenas time / faster-coco-eval time: {ours / theirs:.2f} (load + evaluate), "
        f"{ours / theirs_eval:.2f} (evaluate only)"
    )


if __name__ == "__main__":
    main()
