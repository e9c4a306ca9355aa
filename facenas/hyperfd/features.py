"""Dataset meta-features for HyperFD: per-image feature extractors, the platform-side feature cache,
and the client-side summary that is all a client ever hands to the platform about its dataset.

HyperFD describes a dataset by pooling per-image features of a frozen extractor (design note
``HYPERFD.md`` §1.2). Three extractors are registered in :data:`EXTRACTORS` and built by name with
:func:`create_extractor`:

* ``label_stats``: ``scipy.stats.describe`` of the image's face-box areas relative to the image
  area (the paper's ``stats`` variant), 7 numbers.
* ``detector``: global-average-pooled FPN features of a RetinaFace (by default the shipped
  WIDER-pretrained ``wider_subset_320``), 3 levels x channels (240 for the default detector).
* ``timm:<model>``: a timm model's pooled features (the paper's ``ResNet`` variant), with local
  weights only.

Every extractor has a ``version`` string that names what determines its output (the weights
file's sha256, the input size), so that stored features are matched to the extractor version that
produced them. The privacy boundary: :func:`summarize` turns a client's per-image features into a
:class:`ClientSummary` (mean and std per feature, the image count, the version), fixed in size and
free of per-image data; only that leaves the client.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from scipy import stats
from torch import Tensor, nn

from facenas.core.progress import track
from facenas.core.registry import Registry
from facenas.core.weights import WeightsMismatch, load_local_weights
from facenas.datamodules.images import open_rgb
from facenas.datamodules.records import DetectionSample

LABEL_STATS_NAMES = ("nobs", "min", "max", "mean", "variance", "skewness", "kurtosis")
_UNREADABLE = (OSError, ValueError, RuntimeError, UnidentifiedImageError)


class FeatureExtractor(ABC):
    """Per-image features of detection samples: ``extract(samples)`` -> (N, ``dim``) float32.

    Rows of images that cannot be read are NaN (a warning names the first one and counts them);
    :func:`summarize` leaves such rows out.
    """

    name: str = ""

    @property
    @abstractmethod
    def version(self) -> str:
        """Identifies the extractor and everything its output depends on (weights, input size)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """The number of features per image."""

    @abstractmethod
    def extract(self, samples: Sequence[DetectionSample]) -> np.ndarray:
        """(N, dim) float32 features, one row per sample, in the samples' order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.version!r})"


EXTRACTORS: Registry[Callable[..., FeatureExtractor]] = Registry("meta-feature extractor")


def register_extractor(name: str) -> Callable[[Any], Any]:
    """Decorator registering a :class:`FeatureExtractor` class or factory under ``name``."""
    return EXTRACTORS.register(name)  # type: ignore[return-value]


def create_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """An extractor by registered name, ``name:argument`` passing the argument as the first
    positional one (``timm:resnet18``, ``detector:path/to/best.ckpt``). Unknown names list the
    registered ones; arguments the extractor does not take are a :class:`ValueError`."""
    base, sep, argument = name.partition(":")
    factory = EXTRACTORS.get(base)
    args = (argument,) if sep else ()
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        hint = f" (write {base}:<argument>)" if not sep and "missing" in str(exc) else ""
        raise ValueError(f"meta-feature extractor {name!r}: {exc}{hint}") from None
    return factory(*args, **kwargs)


def _warn_unreadable(bad: list[tuple[str, BaseException]], total: int, what: str) -> None:
    if bad:
        path, exc = bad[0]
        warnings.warn(
            f"{what}: {len(bad)} of {total} images could not be read, their feature rows are NaN "
            f"(first: {path}: {exc})",
            stacklevel=3,
        )


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ label statistics


def describe_areas(areas: np.ndarray) -> np.ndarray:
    """``scipy.stats.describe`` of box areas as 7 numbers (:data:`LABEL_STATS_NAMES`), NaN-free:
    no box -> all zeros; undefined moments (1 box: variance, skewness, kurtosis; equal boxes:
    skewness, kurtosis) -> 0. Kurtosis is Fisher's (excess), the biased estimate, as ``describe``
    gives it. Returns float64 (7,)."""
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    if areas.size == 0:
        return np.zeros(len(LABEL_STATS_NAMES))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # moments of 1 or equal values
        d = stats.describe(areas)
    values = np.array([d.nobs, d.minmax[0], d.minmax[1], d.mean, d.variance, d.skewness, d.kurtosis], dtype=np.float64)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def image_size(sample: DetectionSample) -> tuple[int, int]:
    """(width, height) of a sample's image: the record's when known, else the image header's."""
    if sample.width and sample.height:
        return int(sample.width), int(sample.height)
    with Image.open(sample.image) as image:
        return image.size


@register_extractor("label_stats")
class LabelStats(FeatureExtractor):
    """The 7 numbers of ``scipy.stats.describe`` of an image's face-box areas, each area relative
    to the image area (so images of different resolutions compare).

    Args:
        include_ignored: also count ignore regions (WIDER invalid, VOC difficult, COCO crowd).
            Off by default: an ignore region is often a crowd or an unlabelled blob, not one face,
            so its area would skew the statistics of the faces the detector must find.
    """

    name = "label_stats"

    def __init__(self, include_ignored: bool = False) -> None:
        self.include_ignored = include_ignored

    @property
    def version(self) -> str:
        return "label_stats:v1" + (":with-ignored" if self.include_ignored else "")

    @property
    def dim(self) -> int:
        return len(LABEL_STATS_NAMES)

    def areas(self, sample: DetectionSample) -> np.ndarray:
        """Relative areas (K,) of the sample's boxes that count (float64)."""
        boxes = sample.boxes.astype(np.float64)
        if not self.include_ignored:
            boxes = boxes[~sample.ignore]
        width, height = image_size(sample)
        sides = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
        return sides[:, 0] * sides[:, 1] / (width * height)

    def extract(self, samples: Sequence[DetectionSample]) -> np.ndarray:
        out = np.full((len(samples), self.dim), np.nan, dtype=np.float32)
        bad: list[tuple[str, BaseException]] = []
        for i, sample in enumerate(samples):
            try:
                out[i] = describe_areas(self.areas(sample))
            except _UNREADABLE as exc:  # the image header was needed and is unreadable
                bad.append((sample.image, exc))
        _warn_unreadable(bad, len(samples), self.version)
        return out


# ------------------------------------------------------------------ image backbones


class _ImageExtractor(FeatureExtractor):
    """Shared loop of the image backbones: load, preprocess, batch, ``no_grad`` forward."""

    def __init__(self, batch_size: int, device: str | torch.device) -> None:
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Tensor:
        """An RGB image -> the network's (3, H, W) float input, all images of one size."""

    @abstractmethod
    def forward(self, batch: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, dim) features."""

    def _batches(self, samples: Sequence[DetectionSample]) -> Iterator[range]:
        for start in range(0, len(samples), self.batch_size):
            yield range(start, min(start + self.batch_size, len(samples)))

    def extract(self, samples: Sequence[DetectionSample]) -> np.ndarray:
        out = np.full((len(samples), self.dim), np.nan, dtype=np.float32)
        bad: list[tuple[str, BaseException]] = []
        total = (len(samples) + self.batch_size - 1) // self.batch_size
        with torch.no_grad():
            for rows in track(self._batches(samples), f"{self.name} features", total=total):
                images, kept = [], []
                for i in rows:
                    try:
                        images.append(self.preprocess(open_rgb(samples[i].image)))
                        kept.append(i)
                    except _UNREADABLE as exc:
                        bad.append((samples[i].image, exc))
                if images:
                    feats = self.forward(torch.stack(images).to(self.device))
                    out[kept] = feats.float().cpu().numpy()
        _warn_unreadable(bad, len(samples), self.version)
        return out


@register_extractor("detector")
class DetectorFeatures(_ImageExtractor):
    """Global-average-pooled FPN features of a RetinaFace: the GAPs of the FPN levels
    concatenated (3 x 80 = 240 for the default MobileNetV2 x0.5 detector).

    Images are letterboxed as the detector's training transform does when it does not crop: padded
    bottom/right to a square with the mean colour, resized to ``size`` x ``size``, normalised with
    the training mean/std (:mod:`facenas.datamodules.detection.transforms`).

    Args:
        weights: a shipped detector's name (``wider_subset_320``), an exported weights file
            (:func:`facenas.models.detection.pretrained.export_weights`), a ``{"state_dict": ...}`` file, or
            a Lightning checkpoint (its hyper-parameters give the architecture).
        size: the network input side in pixels.
        batch_size: images per forward pass.
        device: where the network runs.
        backbone, leaky: the architecture of a file without hyper-parameters; channels and anchors
            are read from its tensors.
    """

    name = "detector"

    def __init__(
        self,
        weights: str | Path = "wider_subset_320",
        size: int = 320,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        backbone: str = "mobilenet_v2_0.5",
        leaky: float = 0.1,
    ) -> None:
        from facenas.models.detection.pretrained import load_detector_state, resolve_weights
        from facenas.models.detection.retinaface import RetinaFaceNet

        super().__init__(batch_size, device)
        self.size = int(size)
        path = resolve_weights(str(weights))  # a clear FileNotFoundError naming a missing file
        state, hparams = load_detector_state(path)
        self.backbone = str(hparams.get("backbone", backbone))
        leaky = float(hparams.get("leaky", leaky))
        if "fpn.laterals.0.0.weight" not in state or "score_heads.0.weight" not in state:
            raise ValueError(f"{path}: no RetinaFace network tensors (fpn.*, score_heads.*) in it")
        channels = int(state["fpn.laterals.0.0.weight"].shape[0])
        anchors = int(state["score_heads.0.weight"].shape[0]) // 2
        self.net = RetinaFaceNet(self.backbone, None, channels, leaky, anchors)
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ValueError(
                f"{path}: the weights do not fit a RetinaFace with backbone {self.backbone!r} (pass the backbone it "
                f"was trained with): {first[1] if len(first) > 1 else first[0]}"
            ) from None
        self.net.eval().to(self.device)
        self._dim = channels * len(self.net.fpn.laterals)
        self._sha = _sha256(path)

    @property
    def version(self) -> str:
        return f"detector:v1:{self.backbone}:sha256={self._sha[:16]}:{self.size}px"

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess(self, image: Image.Image) -> Tensor:
        from facenas.datamodules.detection.transforms import normalize, pad_to_square, resize

        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return normalize(resize(pad_to_square(pixels), (self.size, self.size)))

    def forward(self, batch: Tensor) -> Tensor:
        levels = self.net.fpn(self.net.backbone(batch))
        return torch.cat([level.mean(dim=(2, 3)) for level in levels], dim=1)


@register_extractor("timm")
class TimmFeatures(_ImageExtractor):
    """A timm model's global-pooled features (``num_classes=0``), preprocessed by timm's own
    evaluation transform for the model (``resolve_data_config``: resize, centre crop, ImageNet
    mean/std).

    Nothing is downloaded: ``weights`` is a local state-dict file (a timm or ``.ckpt`` state dict;
    the classifier's tensors are dropped; every other tensor must fit the model exactly, so a file of
    another network is an error). Without weights it is
    an error unless ``allow_random=True``, which gives a randomly initialised network seeded by
    ``seed`` (reproducible, and its version says so).

    Args:
        model: the timm model name (``resnet18``, ``resnet50``).
        weights: the local weights file.
        allow_random: accept a randomly initialised network when no weights are given.
        seed: the initialisation seed of a random network.
        batch_size, device: as for :class:`DetectorFeatures`.
    """

    name = "timm"

    def __init__(
        self,
        model: str,
        weights: str | Path | None = None,
        allow_random: bool = False,
        seed: int = 0,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        import timm
        import timm.data

        super().__init__(batch_size, device)
        self.model_name = model.removeprefix("timm/")
        if not timm.is_model(self.model_name):
            raise ValueError(f"timm:{self.model_name}: not a timm model name")
        if weights is None and not allow_random:
            raise ValueError(
                f"timm:{self.model_name} needs local weights (weights=PATH; nothing is downloaded), or "
                "allow_random=True for a randomly initialised network"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net: nn.Module = timm.create_model(self.model_name, pretrained=False, num_classes=0)
        if weights is not None:
            classifier = self.net.pretrained_cfg.get("classifier") or ()
            heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)

            def drop_head(key: str) -> str | None:
                return None if any(key == h or key.startswith(h + ".") for h in heads) else key

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # a partial fit is an error below
                    report = load_local_weights(self.net, weights, drop_head, strict=True)
            except WeightsMismatch as exc:
                report = exc.report
            if report.missing or report.mismatched or report.unexpected:  # another network's file
                raise ValueError(f"{weights}: the weights do not fit timm:{self.model_name} ({report.summary()})")
            self._origin = f"sha256={_sha256(weights)[:16]}"
        else:
            self._origin = f"random-seed={seed}"
        self.net.eval().to(self.device)
        self.data_config = timm.data.resolve_data_config({}, model=self.net)
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        self._dim = int(self.net.num_features)

    @property
    def version(self) -> str:
        side = self.data_config["input_size"][-1]
        return f"timm:v1:{self.model_name}:{self._origin}:{side}px"

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess(self, image: Image.Image) -> Tensor:
        return self.transform(image)

    def forward(self, batch: Tensor) -> Tensor:
        return self.net(batch)


# ------------------------------------------------------------------ platform-side cache


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def cache_file(cache_dir: str | Path, dataset_key: str, version: str) -> Path:
    """The cache file of a (dataset, extractor version); a hash of both keeps distinct pairs
    apart even when their readable parts coincide."""
    tag = hashlib.sha1(f"{dataset_key}\0{version}".encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{_slug(dataset_key)}--{_slug(version)}--{tag}.npz"


def _read_cache(path: Path, version: str, names: np.ndarray) -> np.ndarray | None:
    """The cached features (sorted-name order) when the file is for this version and these names."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["version"]) != version or not np.array_equal(data["names"], names):
                return None
            features = data["features"]
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"ignoring unreadable feature cache {path}: {exc}", stacklevel=3)
        return None
    return features if features.shape[0] == len(names) else None


def _write_cache(path: Path, version: str, names: np.ndarray, features: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, version=np.array(version), names=names, features=features)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def extract_features(
    samples: Sequence[DetectionSample],
    extractor: FeatureExtractor | str,
    cache_dir: str | Path | None = None,
    dataset_key: str | None = None,
) -> np.ndarray:
    """Per-image features (N, D) float32 of a dataset, rows in the samples' order.

    With ``cache_dir`` (the platform's store for the datasets it owns) the features are kept in one
    ``.npz`` per (``dataset_key``, extractor version), keyed by the sorted image names: reused when
    the file holds exactly these names, recomputed (and the file replaced) when the image list
    differs. Image names must then be unique.

    Args:
        samples: the dataset's images.
        extractor: an extractor, or a name for :func:`create_extractor` with default arguments.
        cache_dir: the cache folder; None computes without caching.
        dataset_key: the dataset's name in the cache (required with ``cache_dir``).
    """
    if isinstance(extractor, str):
        extractor = create_extractor(extractor)
    samples = list(samples)
    if cache_dir is None:
        return _checked(extractor, extractor.extract(samples), len(samples))
    if not dataset_key:
        raise ValueError("extract_features: a cache_dir needs a dataset_key (the dataset's name in the cache)")
    names = [s.name or s.image for s in samples]
    order = np.argsort(np.array(names, dtype=str), kind="stable")
    sorted_names = np.array(names, dtype=str)[order]
    duplicate = next((a for a, b in zip(sorted_names[:-1], sorted_names[1:]) if a == b), None)
    if duplicate is not None:
        raise ValueError(f"extract_features: image name {duplicate!r} occurs twice; cached features need unique names")
    path = cache_file(cache_dir, dataset_key, extractor.version)
    cached = _read_cache(path, extractor.version, sorted_names)
    if cached is not None and cached.shape[1:] == (extractor.dim,):
        out = np.empty_like(cached, dtype=np.float32)
        out[order] = cached
        return out
    features = _checked(extractor, extractor.extract(samples), len(samples))
    _write_cache(path, extractor.version, sorted_names, features[order])
    return features


def _checked(extractor: FeatureExtractor, features: np.ndarray, n: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.shape != (n, extractor.dim):
        raise RuntimeError(
            f"{extractor!r} returned features of shape {features.shape}, expected ({n}, {extractor.dim})"
        )
    return features


# ------------------------------------------------------------------ client-side summary


@dataclass(frozen=True, eq=False)
class ClientSummary:
    """What a client hands to the platform about its dataset: fixed in size whatever the number of
    images, and holding no image, path or per-image feature.

    Attributes:
        mean: (D,) float32, the mean of the per-image features.
        std: (D,) float32, their standard deviation (population, ``ddof=0``).
        num_images: the number of images summarised.
        extractor_version: the :attr:`FeatureExtractor.version` that produced the features.
    """

    mean: np.ndarray
    std: np.ndarray
    num_images: int
    extractor_version: str

    def __post_init__(self) -> None:
        mean = np.array(self.mean, dtype=np.float32).reshape(-1)
        std = np.array(self.std, dtype=np.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"ClientSummary: mean {mean.shape} and std {std.shape} differ in size")
        mean.flags.writeable = False
        std.flags.writeable = False
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "num_images", int(self.num_images))
        object.__setattr__(self, "extractor_version", str(self.extractor_version))

    @property
    def dim(self) -> int:
        """The number of features D."""
        return int(self.mean.shape[0])

    def vector(self) -> np.ndarray:
        """(2D,) float32: the mean, then the std."""
        return np.concatenate([self.mean, self.std])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what goes over the wire)."""
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "num_images": self.num_images,
            "extractor_version": self.extractor_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientSummary:
        """The inverse of :meth:`to_dict`."""
        return cls(data["mean"], data["std"], data["num_images"], data["extractor_version"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientSummary):
            return NotImplemented
        return (
            self.num_images == other.num_images
            and self.extractor_version == other.extractor_version
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )

    __hash__ = None  # type: ignore[assignment]


def summarize(features: np.ndarray, extractor_version: str | FeatureExtractor) -> ClientSummary:
    """The client-side summary of per-image features (N, D): their mean and std per feature and N.

    Rows with a non-finite value (unreadable images) are left out and not counted.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"summarize: features must be (N, D), got shape {features.shape}")
    rows = features[np.isfinite(features).all(axis=1)]
    if len(rows) == 0:
        raise ValueError("summarize: no image with finite features to summarise")
    version = extractor_version.version if isinstance(extractor_version, FeatureExtractor) else extractor_version
    return ClientSummary(rows.mean(axis=0), rows.std(axis=0), len(rows), version)


def client_summary(samples: Sequence[DetectionSample], extractor: FeatureExtractor | str) -> ClientSummary:
    """Extract a dataset's features and summarise them, on the client: nothing is cached, and only
    the returned summary is meant to leave."""
    if isinstance(extractor, str):
        extractor = create_extractor(extractor)
    return summarize(extract_features(samples, extractor), extractor)
