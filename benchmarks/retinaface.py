"""RetinaFace performance: batched matching + loss against a per-image loop, training
throughput, data-loading throughput, and inference latency.

    python benchmarks/retinaface.py [--device cpu|cuda] [--repeat 10] [--skip-train] [--smoke]

1. Matching + loss, batch 32 at 640 x 640 (16,800 anchors), ~12 faces per image with WIDER-like
   sizes: facenas's batched :class:`MultiBoxLoss` against the same loss whose matching runs
   image by image in a Python loop, written as RetinaFace's reference ``match()`` (a loop over
   images, and over each image's faces to force their best anchors). Both give identical labels.
2. Training throughput (images/s), batch 32 at 640 x 640: forward + backward + SGD step on
   resident tensors; on CUDA with bf16 autocast and channels_last.
3. Data loading throughput of the training loader (crop, jitter, flip, resize to 640).
4. Inference latency, 640 x 480, batch 1: network + decoding + NMS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_time

from facenas.models.detection import MultiBoxLoss, RetinaFace
from facenas.models.detection.anchors import AnchorGrid, Matches, anchors_xyxy


def wider_like_batch(batch: int, size: int, faces_per_image: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((batch,), float(faces_per_image)), generator=g).long().clamp(min=1)
    total = int(counts.sum())
    side = torch.exp(torch.empty(total).uniform_(2.3, 5.5, generator=g))  # 10 .. 245 px
    xy = torch.rand(total, 2, generator=g) * (size - side[:, None])
    boxes = torch.cat([xy, xy + side[:, None] * torch.tensor([1.0, 1.2])], 1).clamp(max=size)
    marks = xy[:, None, :] + torch.rand(total, 5, 2, generator=g) * side[:, None, None]
    return {
        "boxes": boxes,
        "image": torch.repeat_interleave(torch.arange(batch), counts),
        "ignore": torch.zeros(total, dtype=torch.bool),
        "landmarks": marks,
    }


def loop_match(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_image: torch.Tensor,
    batch_size: int,
    gt_ignore: torch.Tensor | None = None,
    pos_iou: float = 0.5,
    neg_iou: float | None = None,
    force_iou: float = 0.2,
) -> Matches:
    """RetinaFace's reference matching, one image at a time (the baseline), with the rules of
    :func:`match_anchors`: a face claims its best anchor when they overlap at least ``force_iou``;
    of two faces claiming one anchor, the one it overlaps more (then the earlier one) gets it."""
    neg_iou = pos_iou / 2 + 0.05 if neg_iou is None else neg_iou
    labels = torch.zeros(batch_size, anchors.shape[0], dtype=torch.long)
    index = torch.zeros(batch_size, anchors.shape[0], dtype=torch.long)
    boxes = anchors_xyxy(anchors)
    ignore_all = gt_ignore if gt_ignore is not None else torch.zeros(len(gt_boxes), dtype=torch.bool)
    for b in range(batch_size):
        rows = torch.nonzero(gt_image == b).reshape(-1)
        if len(rows) == 0:
            continue
        iou = box_iou(gt_boxes[rows], boxes)
        best_truth_overlap, best_truth_idx = iou.max(0)
        best_prior_idx = iou.argmax(1)  # the first anchor reaching a face's maximum
        best_prior_overlap = iou.gather(1, best_prior_idx[:, None])[:, 0]
        ignore = ignore_all[rows]
        claimed: dict[int, tuple[float, int]] = {}  # anchor -> (overlap, face) of its claim
        for j in range(len(rows)):
            overlap, anchor = float(best_prior_overlap[j]), int(best_prior_idx[j])
            if not ignore[j] and overlap >= force_iou and overlap > claimed.get(anchor, (-1.0, -1))[0]:
                claimed[anchor] = (overlap, j)
        for anchor, (_, j) in claimed.items():
            best_truth_idx[anchor] = j
            best_truth_overlap[anchor] = 2.0
        lab = torch.full_like(best_truth_idx, -1)
        lab[best_truth_overlap < neg_iou] = 0
        lab[(best_truth_overlap >= pos_iou) & ~ignore[best_truth_idx]] = 1
        labels[b], index[b] = lab, rows[best_truth_idx]
    return Matches(labels=labels, gt_index=index)


def bench_matching(repeat: int, batch: int = 32, size: int = 640) -> list[str]:
    import facenas.models.detection.loss as loss_module

    grid = AnchorGrid(size, size)
    anchors = grid.anchors()
    targets = wider_like_batch(batch, size, 12)
    g = torch.Generator().manual_seed(1)
    preds = (
        torch.randn(batch, len(anchors), 2, generator=g),
        torch.randn(batch, len(anchors), 4, generator=g),
        torch.randn(batch, len(anchors), 10, generator=g),
    )
    batched = loss_module.match_anchors(
        anchors, targets["boxes"], targets["image"], batch, targets["ignore"], grid=grid
    )
    looped = loop_match(anchors, targets["boxes"], targets["image"], batch, targets["ignore"])
    assert torch.equal(batched.labels, looped.labels), "batched and looped matching disagree"
    pos = batched.labels == 1
    assert torch.equal(batched.gt_index[pos], looped.gt_index[pos])

    criterion = MultiBoxLoss()
    t_match = median_time(
        lambda: loss_module.match_anchors(
            anchors, targets["boxes"], targets["image"], batch, targets["ignore"], grid=grid
        ),
        repeat,
    )
    t_match_loop = median_time(
        lambda: loop_match(anchors, targets["boxes"], targets["image"], batch, targets["ignore"]), repeat
    )
    t_loss = median_time(lambda: criterion(*preds, anchors, targets, grid), repeat)
    original = loss_module.match_anchors
    loss_module.match_anchors = lambda *a, grid=None, **k: loop_match(*a, **k)
    try:
        t_loss_loop = median_time(lambda: criterion(*preds, anchors, targets, grid), repeat)
    finally:
        loss_module.match_anchors = original
    faces = len(targets["boxes"]) / batch
    return [
        f"batch {batch} x {size}^2, {len(anchors):,} anchors, {faces:.1f} faces/image, "
        f"{torch.get_num_threads()} threads",
        "| step | batched (ms) | per-image loop (ms) | speed-up |",
        "|---|---|---|---|",
        f"| matching | {1e3 * t_match:.1f} | {1e3 * t_match_loop:.1f} | {t_match_loop / t_match:.1f}x |",
        f"| matching + loss | {1e3 * t_loss:.1f} | {1e3 * t_loss_loop:.1f} | {t_loss_loop / t_loss:.1f}x |",
    ]


def bench_training(device: str, repeat: int, batch: int = 32, size: int = 640) -> list[str]:
    model = RetinaFace(channels_last=device == "cuda").to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = {k: v.to(device) for k, v in wider_like_batch(batch, size, 12).items()}
    anchors, grid = model.anchors(size, size), model.anchor_grid(size, size)
    amp = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        with amp:
            scores, boxes, marks = model(images)
        loss = model.criterion(scores.float(), boxes.float(), marks.float(), anchors, targets, grid)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = median_time(step, repeat, sync)
    precision = ", bf16 + channels_last" if device == "cuda" else ", fp32"
    line = f"| training step, batch {batch} at {size}^2 ({device}{precision}) | {batch / t:.1f} images/s | "
    line += f"{1e3 * t:.0f} ms/step |"
    if device == "cuda":
        line += f" peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB |"
    return [line]


def bench_loader(
    batches: int,
    workers: int,
    batch: int = 32,
    size: int = 640,
    images: int = 200,
    source: tuple[int, int] = (1024, 768),
) -> list[str]:
    from facenas.datamodules.detection import FaceDetectionDataModule

    with tempfile.TemporaryDirectory() as tmp:
        data = FaceDetectionDataModule(
            synthetic_images=images,
            synthetic_size=source,
            synthetic_root=f"{tmp}/syn",
            split_file=f"{tmp}/split.json",
            image_size=size,
            batch_size=batch,
            num_workers=workers,
        )
        data.prepare_data()
        data.setup()
        loader = data.train_dataloader()
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        n = 0
        for _ in range(batches):
            try:
                n += next(it)["images"].shape[0]
            except StopIteration:
                it = iter(loader)
        elapsed = time.perf_counter() - start
    what = f"{source[0]}x{source[1]} JPEGs -> {size}^2, {workers} workers"
    return [f"| training data loader, {what} | {n / elapsed:.1f} images/s | |"]


def bench_latency(repeat: int, width: int = 640, height: int = 480) -> list[str]:
    model = RetinaFace().eval()
    image = torch.randn(1, 3, height, width)
    t = median_time(lambda: model.detect(image), repeat)
    what = f"inference, {width}x{height}, batch 1 (cpu, fp32, network + decode + NMS)"
    return [f"| {what} | {1e3 * t:.1f} ms | {1 / t:.1f} images/s |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="every measurement once at a tiny size: checks the script, times nothing"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.smoke:
        lines = bench_matching(1, batch=2, size=128)
        lines += bench_training(args.device, 1, batch=2, size=128) + bench_loader(1, 0, 2, 128, 8, (160, 120))
        lines += bench_latency(1, 160, 120)
        print("\n".join(lines))
        return
    lines = bench_matching(args.repeat)
    lines += ["", "| measurement | throughput | detail |", "|---|---|---|"]
    if not args.skip_train:
        lines += bench_training(args.device, max(3, args.repeat // 3))
        lines += bench_loader(6, 2)
    lines += bench_latency(max(args.repeat, 20))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
