"""FaceIDDataModule: identification layouts (or synthetic identities) -> training batches with
identity labels, and evaluation batches with identities and demographic groups."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2

from ..base import SplitDataModule
from ..images import image_files, open_rgb
from ..records import DataError, DataReport, IdentitySample
from ..splits import DEFAULT_RATIOS, split_identities
from .formats import IDENTITY_FORMATS, read_identities
from .synthetic import generate_identity_dataset


def crop_face(image: Image.Image, bbox: tuple[float, float, float, float] | None, margin: float) -> Image.Image:
    """Crop a face box enlarged by ``margin`` (a fraction of its size) on every side; the whole
    image when there is no box."""
    if bbox is None:
        return image
    x1, y1, x2, y2 = bbox
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return image.crop((int(x1 - dx), int(y1 - dy), int(x2 + dx), int(y2 + dy)))


def train_transform(size: int) -> v2.Compose:
    """Flip, colour jitter and a small random resized crop, then [-1, 1] normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.02),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


def eval_transform(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


class IdentityDataset(Dataset):
    """Identity samples -> ``{"images", "labels" (training class or -1), "identities", "groups",
    "paths" (image file), "identity_names"}``.
    An unreadable image is replaced by the next readable one and reported once."""

    def __init__(
        self,
        samples: Sequence[IdentitySample],
        transform: v2.Compose,
        labels: dict[str, int],
        identities: dict[str, int],
        groups: Sequence[int],
        crop_margin: float,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.labels = labels
        self.identities = identities
        self.groups = list(groups)
        self.crop_margin = crop_margin

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.samples)):
            sample = self.samples[(index + offset) % len(self.samples)]
            try:
                image = crop_face(open_rgb(sample.image), sample.bbox, self.crop_margin)
            except (OSError, ValueError) as exc:
                warnings.warn(f"skipping unreadable image {sample.image}: {exc}", stacklevel=1)
                continue
            k = (index + offset) % len(self.samples)
            return {
                "images": self.transform(image),
                "labels": self.labels.get(sample.identity, -1),
                "identities": self.identities[sample.identity],
                "groups": self.groups[k],
                "paths": str(sample.image),
                "identity_names": sample.identity,
            }
        raise DataError("no readable image in the data set")


class FaceIDDataModule(SplitDataModule):
    """Face-identification data from any identification format, or synthetic identities when
    no ``format`` is given.

    Training classes are the identities of the training split. By default whole identities are
    split 6:1:3 (``split_by="identity"``): validation and test identities are unseen, and each
    keeps all its images, so every evaluated identity has several. With ``split_by="image"``
    each identity's images are split instead (closed set). The split is written to
    ``split_file`` and reused.

    Args:
        format: ``csv``, ``folders``, ``celeba`` or ``vggface2`` (see ``facenas data check``);
            None: synthetic identities.
        annotations, images: the format's annotation file and image folder.
        reader_args: extra reader arguments, e.g. ``{"attributes_file": "list_attr_celeba.txt"}``
            for CelebA's gender, ``{"identity_column": "person"}`` for a CSV.
        group_column: the demographic attribute of the fairness metrics (``gender``; ``race`` or
            ``age_bin`` when the data has them); a name that is not a column of data with
            group columns is an error.
        split_by, split_ratios, split_file, seed: the split.
        balance_groups: keep as many identities of every group as the smallest group has
            (FR-NAS trains on gender-balanced subsets).
        min_images_per_identity: identities with fewer images are left out.
        synthetic_identities, synthetic_images_per_identity, synthetic_size, synthetic_seed,
            synthetic_root: the synthetic default.
        image_size: network input side (112).
        crop_margin: margin around face boxes when the data has them.
        augment: training augmentation (flip, colour jitter, random resized crop).
        batch_size, eval_batch_size, num_workers: loader settings.
        verify: image check when reading (``none``, ``header``, ``full``).
        predict_images: a folder of face crops without labels (or one crop) for ``facenas
            predict``, searched recursively; nothing else is read or generated. Each crop's
            ``identity`` in the written ``meta.csv`` is the folder holding it, relative to this
            one (a folder per person is the usual layout), or the crop's own name for files
            directly in it; its group is empty. A path that does not exist or a folder
            without images is refused here, before anything is written.
    """

    def __init__(
        self,
        format: str | None = None,
        annotations: str | None = None,
        images: str | None = None,
        reader_args: dict[str, Any] | None = None,
        group_column: str = "gender",
        split_by: Literal["identity", "image"] = "identity",
        split_ratios: Sequence[float] = DEFAULT_RATIOS,
        split_file: str | None = None,
        seed: int = 0,
        balance_groups: bool = False,
        min_images_per_identity: int = 2,
        synthetic_identities: int = 100,
        synthetic_images_per_identity: int = 10,
        synthetic_size: int = 112,
        synthetic_seed: int = 0,
        synthetic_root: str = "data/synthetic_ids",
        image_size: int = 112,
        crop_margin: float = 0.2,
        augment: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        verify: Literal["none", "header", "full"] = "header",
        predict_images: str | None = None,
    ) -> None:
        super().__init__()
        self._predict_samples = None if predict_images is None else _unlabelled_crops(predict_images)
        if split_by not in ("identity", "image"):
            raise ValueError(f"split_by must be 'identity' or 'image', got {split_by!r}")
        if format is None:
            if annotations is not None or images is not None:
                raise ValueError(
                    f"{'annotations' if annotations is not None else 'images'} is set but format is not: "
                    f"name the layout ({', '.join(IDENTITY_FORMATS)})"
                )
        else:
            IDENTITY_FORMATS.get(format)  # an unknown format fails here
            if annotations is None and (format != "folders" or images is None):
                raise ValueError(
                    f"format {format!r} needs "
                    + ("images (the identity folders)" if format == "folders" else "annotations")
                    + " (leave format out for synthetic identities)"
                )
        self.save_hyperparameters()
        self.splits: dict[str, list[IdentitySample]] = {}
        self.group_names: list[str] = []
        self.num_classes: int | None = None
        self.report = DataReport(source="identification data")

    def _synthetic(self) -> Path:
        h = self.hparams
        root = self._synthetic_folder(
            h.synthetic_identities, h.synthetic_images_per_identity, h.synthetic_size, h.synthetic_seed
        )
        return generate_identity_dataset(
            root, h.synthetic_identities, h.synthetic_images_per_identity, size=h.synthetic_size, seed=h.synthetic_seed
        )

    def prepare_data(self) -> None:
        if self.hparams.format is None:
            self._synthetic()

    def _balanced(self, samples: list[IdentitySample]) -> list[IdentitySample]:
        column = self.hparams.group_column
        by_group: dict[str, set[str]] = defaultdict(set)
        for s in samples:
            if s.attributes.get(column) is not None:
                by_group[s.attributes[column]].add(s.identity)
        if len(by_group) < 2:
            return samples
        count = min(len(v) for v in by_group.values())
        rng = np.random.default_rng(self.hparams.seed)
        keep = {i for ids in by_group.values() for i in rng.choice(sorted(ids), size=count, replace=False)}
        return [s for s in samples if s.identity in keep]

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            if self.hparams.predict_images is not None:
                self._unlabelled(stage)
            else:
                self._read_splits()
        self._require_splits(stage)

    def _unlabelled(self, stage: str | None) -> None:
        """The ``predict`` split of an unlabelled folder of crops (see ``predict_images``)."""
        if stage != "predict":
            raise ValueError("predict_images (face crops without labels) is only for `facenas predict`")
        samples = self._predict_samples or _unlabelled_crops(self.hparams.predict_images)
        self.splits = {"predict": samples}
        self.group_names = []
        self._labels = {}
        self._identities = {name: i for i, name in enumerate(sorted({s.identity for s in samples}))}

    def _why_empty(self, part: str) -> str:
        h = self.hparams
        return (
            f"the split by {h.split_by} with ratios {list(h.split_ratios)} leaves it none of the "
            f"{sum(len(v) for v in self.splits.values())} images"
        )

    def _read_splits(self) -> None:
        h = self.hparams
        if h.format is None:
            labels = self._synthetic()
            samples, report = read_identities("csv", labels, verify=h.verify)
            source = f"synthetic-{labels.parent.name}"
        else:
            samples, report = read_identities(
                h.format, h.annotations, h.images, verify=h.verify, **(h.reader_args or {})
            )
            source = Path(h.annotations or h.images).stem
        columns = sorted({k for s in samples for k in s.attributes})
        if columns and h.group_column not in columns:  # else every group would be silently empty
            raise DataError(
                f"group_column {h.group_column!r} is not a column of the data (columns: {', '.join(columns)})",
                h.annotations or h.images,
            )
        self.report.merge(report)
        counts: dict[str, int] = defaultdict(int)
        for s in samples:
            counts[s.identity] += 1
        samples = [s for s in samples if counts[s.identity] >= h.min_images_per_identity]
        if h.balance_groups:
            samples = self._balanced(samples)
        if not samples:
            raise DataError(f"no identity has {h.min_images_per_identity} or more images", h.annotations or h.images)
        if self.report.issues and (self.trainer is None or self.trainer.is_global_zero):
            print(self.report.summary())
        split_file = h.split_file or f"data/splits/{source}-{h.split_by}-seed{h.seed}.json"
        self.splits = split_identities(samples, split_file, by=h.split_by, ratios=h.split_ratios, seed=h.seed)
        self.group_names = sorted({s.attributes.get(h.group_column) for s in samples} - {None})
        self.classes = sorted({s.identity for s in self.splits["train"]})
        self.num_classes = len(self.classes)
        self._labels = {name: i for i, name in enumerate(self.classes)}
        self._identities = {name: i for i, name in enumerate(sorted(counts))}
        if not self.num_classes:
            raise DataError("the training split has no identities", h.annotations or h.images)

    def _dataset(self, part: str, train: bool) -> IdentityDataset:
        h = self.hparams
        index = {g: i for i, g in enumerate(self.group_names)}
        samples = self.splits[part]
        groups = [index.get(s.attributes.get(h.group_column), -1) for s in samples]
        transform = train_transform(h.image_size) if train and h.augment else eval_transform(h.image_size)
        return IdentityDataset(samples, transform, self._labels, self._identities, groups, h.crop_margin)

    def _collate(self, train: bool):
        return default_collate


def _unlabelled_crops(folder: str) -> list[IdentitySample]:
    """The crops under ``folder`` (see ``FaceIDDataModule``'s ``predict_images``), or a
    ValueError naming the path as given."""
    try:
        root, files = image_files(folder)
    except FileNotFoundError as exc:
        raise ValueError(f"{folder!r}: {exc.strerror}") from None
    out = []
    for path in files:
        name = path.relative_to(root)
        identity = name.parent.as_posix() if name.parent != Path(".") else name.with_suffix("").as_posix()
        out.append(IdentitySample(image=str(path), identity=identity))
    return out
