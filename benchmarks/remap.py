"""Remapped against random initialisation of sampled NAS architectures (FNA's rules,
models/detection/remap.py): the training loss after the same steps on the same batches.

The seed is the largest network of HyperFD's NAS space, trained here on the synthetic face set
for ``--seed-steps`` steps (or read from ``--seed-ckpt``, e.g. the WIDER-subset run of
benchmarks/RESULTS.md). Then each of ``--archs`` architectures of ``facenas.search.spaces.pool`` trains
``--steps`` steps twice, from a random initialisation and from the seed remapped onto it, with
the same seed, the same batches in the same order and the same optimiser (Adam 1e-3).

    python benchmarks/remap.py [--seed-steps 300] [--steps 50] [--archs 4] [--image-size 128] [--images 400]
        [--seed-ckpt CKPT]

Printed: the mean training loss of the first and of the last 10 of the steps, per architecture.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl

from facenas.datamodules.detection import FaceDetectionDataModule
from facenas.models.detection import RetinaFace
from facenas.search.spaces import pool


class LossRecorder(pl.Callback):
    """Every training step's loss, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def train(model: RetinaFace, data: FaceDetectionDataModule, steps: int, seed: int) -> list[float]:
    """``steps`` optimiser steps with Lightning's Trainer (no validation, no checkpoints)."""
    pl.seed_everything(seed, verbose=False)
    recorder = LossRecorder()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=data)
    return recorder.losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-steps", type=int, default=300, help="training steps of the largest network")
    parser.add_argument("--seed-ckpt", type=str, default=None, help="a trained largest network instead")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--archs", type=int, default=4, help="architectures of pool(n, seed=0)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=400, help="synthetic training images (320 x 240)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    root = Path(tempfile.mkdtemp(prefix="facenas_remap_"))
    data = FaceDetectionDataModule(
        synthetic_images=args.images,
        synthetic_size=(320, 240),
        synthetic_root=str(root / "synthetic"),
        image_size=args.image_size,
        batch_size=args.batch,
        num_workers=0,
    )
    seed_ckpt = args.seed_ckpt
    if seed_ckpt is None:
        start = time.perf_counter()
        largest = RetinaFace(backbone="proxyless_x05:largest", optimizer="adam", lr=1e-3)
        losses = train(largest, data, args.seed_steps, args.seed)
        seed_ckpt = str(root / "largest.ckpt")
        torch.save({"state_dict": largest.state_dict()}, seed_ckpt)
        print(
            f"largest network: {args.seed_steps} steps in {time.perf_counter() - start:.0f} s, "
            f"loss {statistics.mean(losses[:10]):.3f} -> {statistics.mean(losses[-10:]):.3f}"
        )

    rows = []
    for arch in pool(args.archs, seed=0):
        row = {"arch": arch}
        for init in ("random", "remapped"):
            pl.seed_everything(args.seed, verbose=False)  # the same random initialisation where not remapped
            model = RetinaFace(
                backbone=f"proxyless_x05:{arch}",
                optimizer="adam",
                lr=1e-3,
                remap_from=seed_ckpt if init == "remapped" else None,
            )
            losses = train(model, data, args.steps, args.seed)
            row[init] = (statistics.mean(losses[:10]), statistics.mean(losses[-10:]))
        rows.append(row)
        print(
            f"{arch}: random {row['random'][0]:.3f} -> {row['random'][1]:.3f}, "
            f"remapped {row['remapped'][0]:.3f} -> {row['remapped'][1]:.3f}",
            flush=True,
        )

    print(
        f"\n| architecture | init | loss, steps 1-{min(10, args.steps)} "
        f"| loss, steps {max(1, args.steps - 9)}-{args.steps} |"
    )
    print("|---|---|---:|---:|")
    for row in rows:
        for init in ("random", "remapped"):
            first, last = row[init]
            print(f"| `{row['arch']}` | {init} | {first:.3f} | {last:.3f} |")
    for init in ("random", "remapped"):
        print(f"mean over architectures, {init}: {statistics.mean(r[init][1] for r in rows):.3f} (last 10 steps)")


if __name__ == "__main__":
    main()
