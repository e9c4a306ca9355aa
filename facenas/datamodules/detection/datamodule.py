"""FaceDetectionDataModule: any detection format (or the synthetic default) -> batches for
RetinaFace training and AP evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..base import SplitDataModule
from ..images import image_folder, is_video, open_rgb, stem_clash
from ..records import DataError, DataReport, DetectionSample
from ..splits import DEFAULT_RATIOS, split_detection
from .domains import build_domain, check_domain
from .formats import DETECTION_FORMATS, attach_box_attributes, read_detection
from .synthetic import DOMAINS, generate_detection_dataset
from .transforms import EvalTransform, Faces, TrainTransform

_STRIDE = 32  # evaluation batches are padded to a multiple of the coarsest feature stride


def load_image(path: str) -> torch.Tensor:
    """Decode an image file to a uint8 RGB CHW tensor (see :func:`facenas.datamodules.images.open_rgb`)."""
    return torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1).contiguous()


class DetectionDataset(Dataset):
    """Detection samples with a train or eval transform. An image that cannot be decoded yields
    ``{"unreadable": (path, reason)}`` and a warning naming the file: the collate functions leave
    it out of the batch and list it under the batch's ``unreadable`` key, where
    :class:`FaceDetectionDataModule` counts it against ``max_bad_fraction``."""

    def __init__(self, samples: Sequence[DetectionSample], transform: TrainTransform | EvalTransform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            image = load_image(sample.image)
        except (RuntimeError, OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable image {sample.image}: {exc}", stacklevel=1)
            return {"unreadable": (str(sample.image), " ".join(str(exc).split()) or type(exc).__name__)}
        marks = sample.landmarks if sample.landmarks is not None else np.full((len(sample), 5, 2), np.nan, np.float32)
        faces = Faces(
            torch.from_numpy(sample.boxes.copy()),
            torch.from_numpy(marks.copy()),
            torch.from_numpy(sample.ignore.copy()),
        )
        height, width = image.shape[-2:]
        if isinstance(self.transform, TrainTransform):
            image, faces = self.transform(image, faces)
            return {"image": image, "faces": faces}
        image, scale = self.transform(image)
        meta = {
            "name": sample.name,
            "image_size": (int(height), int(width)),
            "scale": scale,
            "boxes": faces.boxes,
            "ignore": faces.ignore,
            "attributes": sample.attributes,
            "path": sample.image,
        }
        return {"image": image, "meta": meta}


class VideoFrames(IterableDataset):
    """The frames of a video file, in order, as evaluation items (``meta`` as
    :class:`DetectionDataset`'s, plus ``frame`` (index), ``time`` (seconds) and ``pixels``
    (the frame as HxWx3 uint8 RGB, for the drawn copy)); decoded by PyAV one at a time."""

    def __init__(self, path: str, name: str, transform: EvalTransform) -> None:
        self.path = path
        self.name = name
        self.transform = transform

    def __iter__(self):
        from ..video import read_frames

        for index, time, pixels in read_frames(self.path):
            image = torch.from_numpy(pixels).permute(2, 0, 1)
            height, width = image.shape[-2:]
            image, scale = self.transform(image)
            meta = {
                "name": self.name,
                "image_size": (int(height), int(width)),
                "scale": scale,
                "boxes": torch.zeros(0, 4),
                "ignore": torch.zeros(0, dtype=torch.bool),
                "attributes": {},
                "path": self.path,
                "frame": index,
                "time": time,
                "pixels": pixels,
            }
            yield {"image": image, "meta": meta}


def _readable(items: list[dict[str, Any] | None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items with an image, and ``{"unreadable": [(path, reason), ...]}`` for those without
    one (empty when every image decoded)."""
    unreadable = [i["unreadable"] for i in items if i is not None and "unreadable" in i]
    return [i for i in items if i is not None and "unreadable" not in i], (
        {"unreadable": unreadable} if unreadable else {}
    )


def collate_train(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack same-size images; pack all faces with their image index (see MultiBoxLoss)."""
    items, unreadable = _readable(items)
    faces = [i["faces"] for i in items]
    counts = torch.tensor([len(f.boxes) for f in faces], dtype=torch.long)
    return {
        **unreadable,
        "images": torch.stack([i["image"] for i in items]) if items else torch.zeros(0, 3, 1, 1),
        "targets": {
            "boxes": torch.cat([f.boxes for f in faces]) if faces else torch.zeros(0, 4),
            "landmarks": torch.cat([f.landmarks for f in faces]) if faces else torch.zeros(0, 5, 2),
            "ignore": torch.cat([f.ignore for f in faces]) if faces else torch.zeros(0, dtype=torch.bool),
            "image": torch.repeat_interleave(torch.arange(len(faces)), counts),
        },
    }


def collate_eval(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Pad images bottom/right to a common size (a multiple of 32); keep per-image metadata."""
    items, unreadable = _readable(items)
    if not items:
        return {"images": torch.zeros(0, 3, _STRIDE, _STRIDE), "meta": [], **unreadable}
    height = max(i["image"].shape[1] for i in items)
    width = max(i["image"].shape[2] for i in items)
    height, width = -(-height // _STRIDE) * _STRIDE, -(-width // _STRIDE) * _STRIDE
    images = torch.zeros(len(items), 3, height, width)
    for k, item in enumerate(items):
        _, h, w = item["image"].shape
        images[k, :, :h, :w] = item["image"]
    return {"images": images, "meta": [i["meta"] for i in items], **unreadable}


class FaceDetectionDataModule(SplitDataModule):
    """Face-detection data from any reader format, or the seeded synthetic set.

    Sources: with a ``format`` the training data is read from ``train_annotations`` (required)
    in that format; without one a synthetic set (``synthetic_*``) is generated once into
    ``synthetic_root`` and reused.
    Validation and test come from ``val_*`` / ``test_*`` when given; otherwise the training
    source is split (``split_ratios``, 6:1:3 by default, as HyperFD) and the split is written to
    ``split_file`` and reused by every later run. Without test annotations but with validation
    annotations, the test split is the validation set. ``images`` names a folder of
    unannotated images for ``facenas predict`` (then nothing else is read or generated).

    Args:
        format: reader format of the annotation files (wider, retinaface, fddb, voc, dlib, coco);
            None: the synthetic set.
        train_annotations, train_images: training annotations and image folder.
        val_annotations, val_images, test_annotations, test_images: held-out sets.
        val_attributes: per-face attribute CSV for the held-out sets (e.g. WIDER demographics).
        images: what ``facenas predict`` detects faces in: an image file, a folder of images
            (searched recursively; predictions are named by the path relative to it) or a
            video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ``.m4v``; decoded
            frame by frame with PyAV). A path that does not exist, a folder without images
            and two images whose names differ only by their extension (``x.jpg``, ``x.png``:
            both would write ``x.txt``) are refused here, before anything is written.
        split_file: where the split is kept (default ``data/splits/<source>-<seed>.json``).
        split_ratios, seed: the split's proportions and seed.
        synthetic_images, synthetic_domains, synthetic_size, synthetic_seed, synthetic_root:
            the synthetic default (count, domain styles, (width, height), seed, cache folder).
        image_size: side of the square training input (640 in RetinaFace).
        min_crop_ratio: smallest crop side as a fraction of the shorter side (HyperFD: 0.3, 0.55).
        eval_short_side, eval_max_side: evaluation resize (HyperFD: shorter side 720).
        batch_size, eval_batch_size, num_workers: loader settings (batch 32 as RetinaFace).
        verify: image check when reading (``none``, ``header``, ``full``).
        max_bad_fraction: refuse data with more dropped boxes/images than this.
        domain: training data made from real WIDER images by seeded transforms instead of
            ``format`` / the synthetic set: the arguments of
            :func:`~facenas.datamodules.detection.domains.build_domain`, e.g.
            ``{source: wider_train, families: [tiny_crowd, dark], seed: 0, images: 200}``.
    """

    def __init__(
        self,
        format: str | None = None,
        train_annotations: str | None = None,
        train_images: str | None = None,
        val_annotations: str | None = None,
        val_images: str | None = None,
        test_annotations: str | None = None,
        test_images: str | None = None,
        val_attributes: str | None = None,
        images: str | None = None,
        split_file: str | None = None,
        split_ratios: Sequence[float] = DEFAULT_RATIOS,
        seed: int = 0,
        synthetic_images: int = 300,
        synthetic_domains: Sequence[str] = ("plain",),
        synthetic_size: tuple[int, int] = (320, 240),
        synthetic_seed: int = 0,
        synthetic_root: str = "data/synthetic",
        image_size: int = 640,
        min_crop_ratio: float = 0.3,
        eval_short_side: int = 720,
        eval_max_side: int = 1280,
        batch_size: int = 32,
        eval_batch_size: int = 4,
        num_workers: int = 2,
        verify: Literal["none", "header", "full"] = "header",
        max_bad_fraction: float = 0.05,
        domain: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if domain is not None:
            check_domain(domain, format)
        if format is None:
            given = [
                k
                for k, v in (
                    ("train_annotations", train_annotations),
                    ("val_annotations", val_annotations),
                    ("test_annotations", test_annotations),
                )
                if v is not None
            ]
            if given:
                raise ValueError(
                    f"{given[0]} is set but format is not: name the annotation format ({', '.join(DETECTION_FORMATS)})"
                )
        else:
            DETECTION_FORMATS.get(format)  # an unknown format fails here
            if train_annotations is None:
                raise ValueError(f"format {format!r} needs train_annotations (leave format out for synthetic data)")
        unknown = [d for d in synthetic_domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown synthetic domain {unknown[0]!r}; choose from {', '.join(DOMAINS)}")
        if not 0 < min_crop_ratio <= 1:
            raise ValueError(f"min_crop_ratio must be in (0, 1], got {min_crop_ratio}")
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self._predict_samples = None if images is None else _predict_inputs(images)
        self.save_hyperparameters()
        self.splits: dict[str, list[DetectionSample]] = {}
        self.report = DataReport(source="detection data")
        self._undecodable: set[str] = set()

    # ------------------------------------------------------------------ reading

    def _read(
        self, annotations: str | Path, images: str | Path | None, fmt: str | None = None
    ) -> list[DetectionSample]:
        samples, report = read_detection(fmt or self.hparams.format, annotations, images, verify=self.hparams.verify)
        self.report.merge(report)
        return samples

    def _synthetic(self) -> tuple[Path, Path]:
        h = self.hparams
        root = self._synthetic_folder(
            h.synthetic_images, list(h.synthetic_domains), list(h.synthetic_size), h.synthetic_seed
        )
        generate_detection_dataset(
            root,
            h.synthetic_images,
            domains=list(h.synthetic_domains),
            size=tuple(h.synthetic_size),
            seed=h.synthetic_seed,
        )
        return root / "label.txt", root / "images"

    def prepare_data(self) -> None:
        if self.hparams.domain is not None and self.hparams.images is None:
            build_domain(**self.hparams.domain)
        elif self.hparams.format is None and self.hparams.images is None:
            self._synthetic()  # generate once, on one process

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self._read_splits(stage)
        self._require_splits(stage)

    def _why_empty(self, part: str) -> str:
        h = self.hparams
        if part == "test" and h.test_annotations is not None:
            return f"no image of {h.test_annotations} could be read"
        if part != "train" and h.val_annotations is not None:
            return f"no image of {h.val_annotations} could be read"
        if part == "predict":
            return f"no image of {h.images} could be read"
        total = sum(len(v) for v in self.splits.values())
        return f"the split ratios {list(h.split_ratios)} leave it none of the {total} images"

    def _read_splits(self, stage: str | None) -> None:
        h = self.hparams
        if h.images is not None:
            if stage != "predict":
                raise ValueError("images (a folder without annotations) is only for `facenas predict`")
            self.splits = {"predict": self._predict_samples or _predict_inputs(h.images)}
            return
        if h.domain is not None:
            annotations = build_domain(**h.domain) / "wider_face_bbx_gt.txt"
            train = self._read(annotations, annotations.parent / "images", "wider")
        elif h.format is None:
            annotations, images = self._synthetic()
            train = self._read(annotations, images, "retinaface")
        else:
            train = self._read(h.train_annotations, h.train_images)
        source = Path(h.train_annotations or annotations)
        if h.val_annotations is None:
            split_file = h.split_file or f"data/splits/{source.parent.name}-{source.stem}-seed{h.seed}.json"
            self.splits = split_detection(train, split_file, ratios=h.split_ratios, seed=h.seed)
        else:
            val = self._read(h.val_annotations, h.val_images)
            test = self._read(h.test_annotations, h.test_images) if h.test_annotations is not None else val
            self.splits = {"train": train, "val": val, "test": test}
        if h.val_attributes is not None:
            for part in ("val", "test"):
                attach_box_attributes(self.splits[part], h.val_attributes)
        if self.report.issues and (self.trainer is None or self.trainer.is_global_zero):
            print(self.report.summary())
        if self.report.bad_fraction > h.max_bad_fraction:
            raise DataError(
                f"{100 * self.report.bad_fraction:.1f}% of the boxes and images were dropped "
                f"(limit {100 * h.max_bad_fraction:.1f}%); run `facenas data check` for the list"
            )
        if not self.splits["train"]:
            raise DataError("the training split is empty", source)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the batch's images that failed to decode (each once) as dropped, like images
        whose header cannot be read, and stop with one :class:`DataError` once more than
        ``max_bad_fraction`` of the boxes and images are dropped."""
        if isinstance(batch, dict) and batch.get("unreadable"):
            self._count_undecodable(batch.pop("unreadable"))
        return batch

    def _count_undecodable(self, failures: list[tuple[str, str]]) -> None:
        new = [(path, reason) for path, reason in failures if path not in self._undecodable]
        for path, reason in new:
            self._undecodable.add(path)
            self.report.add(path, None, "unreadable_image", f"{path}: does not decode: {reason}")
        limit = self.hparams.max_bad_fraction
        if new and self.report.images_read and self.report.bad_fraction > limit:
            raise DataError(
                f"{len(self._undecodable)} images do not decode (e.g. {new[0][0]}: {new[0][1]}): "
                f"{100 * self.report.bad_fraction:.1f}% of the boxes and images are dropped "
                f"(limit {100 * limit:.1f}%); run `facenas data check --verify full` for the list"
            )

    # ------------------------------------------------------------------ loaders

    def _dataset(self, part: str, train: bool) -> DetectionDataset:
        h = self.hparams
        transform = (
            TrainTransform(h.image_size, h.min_crop_ratio)
            if train
            else EvalTransform(h.eval_short_side, h.eval_max_side)
        )
        return DetectionDataset(self.splits[part], transform)

    def _collate(self, train: bool):
        return collate_train if train else collate_eval

    def predict_dataloader(self) -> DataLoader:
        """The images (or a video's frames, in order, decoded in this process) of ``images``;
        the test split without it."""
        h = self.hparams
        if h.images is None or not is_video(h.images):
            return super().predict_dataloader()
        (sample,) = self.splits["predict"]
        frames = VideoFrames(sample.image, sample.name, EvalTransform(h.eval_short_side, h.eval_max_side))
        return DataLoader(frames, batch_size=h.eval_batch_size, num_workers=0, collate_fn=collate_eval)


def _predict_inputs(images: str) -> list[DetectionSample]:
    """The samples of ``images`` (see :class:`FaceDetectionDataModule`), or a ValueError naming
    the path as given: missing, a folder without images, an unreadable video, a name clash."""
    if is_video(images):
        from ..video import video_info

        if not Path(images).is_file():
            raise ValueError(f"{images!r}: no such file or folder")
        try:
            video_info(images)
        except OSError as exc:
            raise ValueError(f"{images!r}: {exc}") from None
        return [DetectionSample(image=str(images), name=Path(images).name, boxes=np.zeros((0, 4)), ignore=[])]
    try:
        samples = image_folder(images)
    except FileNotFoundError as exc:
        raise ValueError(f"{images!r}: {exc.strerror}") from None
    clash = stem_clash([s.name for s in samples])
    if clash is not None:
        raise ValueError(
            f"{images!r}: {clash[0]} and {clash[1]} would both be written as "
            f"{Path(clash[0]).with_suffix('.txt').as_posix()} (WIDER prediction files are named without the "
            "image's extension): rename one"
        )
    return samples
