"""FaceID performance: training throughput at 112 x 112 for searchable-DPN and timm backbones
with each margin head, and the share of a training step the head and loss take at 10,000
identities.

    python benchmarks/faceid.py [--device cpu|cuda] [--batch 32] [--repeat 3]

On CUDA the step runs under bf16 autocast with channels_last and peak memory is reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_time

from facenas.models.recognition import FaceID, create_head

BACKBONES = ("dpn_search_small_301", "dpn_search_68_301", "resnet50")
HEADS = ("arcface", "cosface", "magface")


def training_step(model: FaceID, images: torch.Tensor, labels: torch.Tensor, opt: torch.optim.Optimizer, device: str):
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            emb = model(images)
        logits, reg = model.head(emb.float(), labels)
        loss = F.cross_entropy(logits, labels) + (reg if reg is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES))
    args = parser.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 112, 112, device=device)
    labels = torch.randint(0, args.identities, (args.batch,), device=device)
    print(f"{device}, batch {args.batch} at 112x112, {args.identities:,} identities, {torch.get_num_threads()} threads")
    print(
        "| backbone | head | images/s | step (ms) | head + loss (ms) | head share |"
        + (" peak GiB |" if device == "cuda" else "")
    )
    print("|---|---|---|---|---|---|" + ("---|" if device == "cuda" else ""))
    for backbone in args.backbones:
        for head in HEADS:
            model = FaceID(
                backbone=backbone, head=head, num_classes=args.identities, channels_last=device == "cuda"
            ).to(device)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t_step = median_time(training_step(model, images, labels, opt, device), args.repeat, sync)
            # the head and loss alone, forward and backward, on embeddings of the same batch
            emb = torch.randn(args.batch, 512, device=device, requires_grad=True)
            lone = create_head(head, 512, args.identities).to(device)

            def head_step(lone=lone, emb=emb) -> None:
                logits, reg = lone(emb, labels)
                loss = F.cross_entropy(logits, labels) + (reg if reg is not None else 0.0)
                loss.backward()

            t_head = median_time(head_step, max(args.repeat, 10), sync)
            row = (
                f"| {backbone} | {head} | {args.batch / t_step:.1f} | {1e3 * t_step:.0f} | {1e3 * t_head:.1f} | "
                f"{100 * t_head / t_step:.1f}% |"
            )
            if device == "cuda":
                row += f" {torch.cuda.max_memory_allocated() / 2**30:.2f} |"
            print(row, flush=True)
            del model, opt


if __name__ == "__main__":
    main()
