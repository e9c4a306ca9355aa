"""A tiny LightningModule and DataModule that exercise the training plumbing (CLI, checkpoints,
loggers, DDP, metric callbacks) in seconds, without a real network.

The model learns one scalar ``gain``; its validation outputs are deterministic functions of the
sample index, so the metrics of a whole validation set can be recomputed exactly in a test and
compared with what a (distributed) run logged.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facenas.datamodules.detection.formats import read_wider

GROUPS = ("female", "male")


def toy_sample(index: int, seed: int = 0) -> dict:
    """Ground truth, detections and an embedding for validation item ``index``."""
    rng = np.random.default_rng([seed, index])
    g = int(rng.integers(1, 6))
    xy = rng.uniform(0, 300, (g, 2))
    wh = rng.uniform(20, 120, (g, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    ignore = rng.random(g) < 0.15
    # detections: a noisy copy of most faces, plus false positives; later items are harder,
    # so the two halves of a split validation set have different AP
    hard = index / 32
    found = rng.random(g) < 0.9 - 0.5 * hard
    det = boxes[found] + rng.normal(0, 3 + 20 * hard, (int(found.sum()), 4))
    fp_xy = rng.uniform(0, 300, (3, 2))
    det = np.concatenate([det, np.concatenate([fp_xy, fp_xy + 40], 1)])
    scores = np.concatenate([rng.uniform(0.4, 1.0, int(found.sum())), rng.uniform(0.0, 0.8, 3)])
    identity = index % 8
    group = identity % 2
    centre = np.random.default_rng([seed, 1000 + identity]).normal(size=16)
    embedding = centre + rng.normal(0, 0.8 + 0.6 * group, 16)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "ignore": torch.tensor(ignore),
        "det_boxes": torch.tensor(det, dtype=torch.float32),
        "det_scores": torch.tensor(scores, dtype=torch.float32),
        "embedding": torch.tensor(embedding, dtype=torch.float32),
        "identity": identity,
        "group": group,
        "gender": GROUPS[group],
    }


class _Items(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collate(batch: list[dict]) -> list[dict]:
    return batch


class ToyFaceData(pl.LightningDataModule):
    """``num_val`` deterministic validation items (and as many for test); the ground-truth boxes
    come from a WIDER annotation file instead when ``annotations`` is given."""

    group_names = list(GROUPS)

    def __init__(self, num_val: int = 32, batch_size: int = 4, seed: int = 0, annotations: str | None = None) -> None:
        super().__init__()
        self.num_val = num_val
        self.batch_size = batch_size
        self.seed = seed
        self.annotations = annotations

    def setup(self, stage: str | None = None) -> None:
        self.items = [toy_sample(i, self.seed) for i in range(self.num_val)]
        if self.annotations is not None:
            for item, sample in zip(self.items, read_wider(self.annotations, verify="none")):
                item["boxes"], item["ignore"] = torch.from_numpy(sample.boxes), torch.from_numpy(sample.ignore)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Items(self.items), batch_size=self.batch_size, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Items(self.items), batch_size=self.batch_size, collate_fn=_collate, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ToyFaceModule(pl.LightningModule):
    """Learns ``gain`` towards 1; reports each item's fixed detections and embedding."""

    monitor = "val/ap50"
    monitor_mode = "max"

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.gain = torch.nn.Parameter(torch.tensor(0.5))

    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        loss = (self.gain - 1.0) ** 2
        self.log("train/loss", loss, batch_size=len(batch))
        return loss

    def _outputs(self, batch: list[dict]) -> dict:
        return {
            "preds": [{"boxes": b["det_boxes"], "scores": b["det_scores"]} for b in batch],
            "targets": [
                {
                    "boxes": b["boxes"],
                    "ignore": b["ignore"],
                    "image_size": (400, 500),
                    "attributes": {"gender": [b["gender"]] * len(b["boxes"])},
                }
                for b in batch
            ],
            "embeddings": torch.stack([b["embedding"] for b in batch]).to(self.device),
            "identities": torch.tensor([b["identity"] for b in batch], device=self.device),
            "groups": torch.tensor([b["group"] for b in batch], device=self.device),
        }

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of pair images for ``facenas.callbacks.VerificationAccuracy``: each channel's mean and
        standard deviation, L2-normalised."""
        return torch.nn.functional.normalize(torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1))

    def validation_step(self, batch: list[dict], batch_idx: int) -> dict:
        self.log("val/gain", self.gain, batch_size=len(batch), sync_dist=True)
        return self._outputs(batch)

    def test_step(self, batch: list[dict], batch_idx: int) -> dict:
        return self._outputs(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ToySearchModule(pl.LightningModule):
    """A trial for search tests: logs ``val/score = (x - 0.3)^2 + y^2 + 1 / (epoch + 1)``,
    ``val/other = (x - 0.8)^2 + 0.1 / (epoch + 1)`` and its one weight ``val/w`` (initialised
    from the seed, then trained towards 1) each validation; can raise, diverge (NaN loss),
    sleep ``sleep`` seconds or compute for ``burn`` seconds per training step."""

    def __init__(
        self,
        x: float = 0.5,
        y: float = 0.0,
        fail: bool = False,
        diverge: bool = False,
        sleep: float = 0.0,
        burn: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.w = torch.nn.Parameter(torch.randn(()))  # drawn from the trial's seed: logged as val/w

    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        import time

        from facenas.models import NonFiniteLossError

        if self.hparams.fail:
            raise RuntimeError(f"boom in trial with x={self.hparams.x}")
        if self.hparams.sleep:
            time.sleep(self.hparams.sleep)
        end = time.perf_counter() + self.hparams.burn  # CPU-bound work, for executor benchmarks
        while time.perf_counter() < end:
            torch.randn(96, 96) @ torch.randn(96, 96)
        loss = (self.w - 1.0) ** 2 + (float("nan") if self.hparams.diverge else 0.0)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {self.current_epoch}, global step {self.global_step}"
            )
        return loss

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        e = self.current_epoch
        self.log("val/score", (self.hparams.x - 0.3) ** 2 + self.hparams.y**2 + 1.0 / (e + 1), batch_size=len(batch))
        self.log("val/other", (self.hparams.x - 0.8) ** 2 + 0.1 / (e + 1), batch_size=len(batch))
        self.log("val/w", self.w, batch_size=len(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)
