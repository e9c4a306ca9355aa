"""HyperFD's dataset meta-features: the extractors against direct computations, the platform-side
cache, and the privacy boundary of the client-side summary."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from facenas.core.registry import UnknownName
from facenas.datamodules.records import DetectionSample
from facenas.hyperfd import (
    EXTRACTORS,
    ClientSummary,
    DetectorFeatures,
    FeatureExtractor,
    LabelStats,
    client_summary,
    create_extractor,
    extract_features,
    summarize,
)

from .conftest import data_path


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> str:
    """A small random RGB PNG (lossless, so decoded pixels are exactly the written ones)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def sample(path: str, name: str, boxes: Sequence[Sequence[float]] = (), ignore: Sequence[bool] | None = None, **kw):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool)
    return DetectionSample(image=path, name=name, boxes=boxes, ignore=ignore, **kw)


@pytest.fixture
def dataset(tmp_path: Path) -> list[DetectionSample]:
    """Five 64x48 (one 40x40) images: 3 boxes + 1 ignored, 1 box, no box, 2 equal boxes, 4 boxes;
    some records know their size, the others leave it to the image header."""
    folder = tmp_path / "client_images"
    folder.mkdir()
    img = [write_image(folder / f"img{i}.png", *((40, 40) if i == 4 else (64, 48)), seed=i) for i in range(5)]
    return [
        sample(
            img[0],
            "a/img0.png",
            [[0, 0, 10, 10], [5, 5, 25, 15], [30, 20, 62, 47], [0, 0, 64, 48]],
            [False, False, False, True],
            width=64,
            height=48,
        ),  # fmt: skip
        sample(img[1], "a/img1.png", [[10, 10, 20, 30]]),
        sample(img[2], "b/img2.png", [], width=64, height=48),
        sample(img[3], "b/img3.png", [[0, 0, 8, 8], [20, 20, 28, 28]]),
        sample(img[4], "b/img4.png", [[0, 0, 4, 4], [1, 1, 9, 9], [2, 2, 30, 12], [10, 10, 40, 40]]),
    ]


def reference_stats(areas: list[float]) -> np.ndarray:
    """``scipy.stats.describe`` straight, NaN -> 0, zeros for no box."""
    if not areas:
        return np.zeros(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = stats.describe(np.asarray(areas, dtype=np.float64))
    return np.nan_to_num([d.nobs, *d.minmax, d.mean, d.variance, d.skewness, d.kurtosis])


# ------------------------------------------------------------------ label_stats


def test_label_stats_is_scipy_describe_of_relative_areas(dataset):
    feats = extract_features(dataset, "label_stats")
    assert feats.shape == (5, 7) and feats.dtype == np.float32 and np.isfinite(feats).all()
    expected = [
        [100 / 3072, 200 / 3072, 32 * 27 / 3072],  # the ignored full-image box does not count
        [200 / 3072],  # one box: variance, skewness and kurtosis are 0, not NaN
        [],  # no box: nobs 0 and zeros
        [64 / 3072, 64 / 3072],  # equal boxes: undefined skewness/kurtosis -> 0
        [16 / 1600, 64 / 1600, 280 / 1600, 900 / 1600],  # 40x40 image, size read from its header
    ]
    for row, areas in zip(feats, expected):
        np.testing.assert_allclose(row, reference_stats(areas), rtol=1e-5, atol=1e-7)
    assert feats[0, 0] == 3 and feats[2].tolist() == [0.0] * 7
    assert feats[4, 4] > 0 and feats[4, 5] != 0  # real spread and skew survive
    with_ignored = LabelStats(include_ignored=True).extract(dataset[:1])
    np.testing.assert_allclose(with_ignored[0], reference_stats([100 / 3072, 200 / 3072, 864 / 3072, 1.0]), rtol=1e-5)
    assert LabelStats().version != LabelStats(include_ignored=True).version


def test_label_stats_unreadable_image_is_a_nan_row_and_left_out_of_the_summary(dataset, tmp_path):
    broken = sample(str(tmp_path / "missing.png"), "missing.png", [[0, 0, 5, 5]])  # no size: the header is needed
    with pytest.warns(UserWarning, match="1 of 6 images could not be read.*missing.png"):
        feats = extract_features([*dataset, broken], "label_stats")
    assert np.isnan(feats[5]).all() and np.isfinite(feats[:5]).all()
    summary = summarize(feats, "label_stats:v1")
    assert summary.num_images == 5
    np.testing.assert_allclose(summary.mean, feats[:5].mean(0), rtol=1e-5)


def test_label_stats_on_real_wider_images():
    from facenas.datamodules.detection import read_wider

    gt = data_path("widerface", "wider_face_split", "wider_face_val_bbx_gt.txt")
    images = data_path("widerface", "WIDER_val", "images")
    samples = [s for s in read_wider(gt, images, verify="none") if Path(s.image).is_file()][:3]
    if not samples:
        pytest.skip("no WIDER validation image present")
    feats = extract_features(samples, "label_stats")
    assert feats.shape == (len(samples), 7)
    for s, row in zip(samples, feats):
        assert row[0] == (~s.ignore).sum()
        with Image.open(s.image) as im:
            width, height = im.size
        keep = s.boxes[~s.ignore].astype(np.float64)
        areas = (keep[:, 2] - keep[:, 0]).clip(0) * (keep[:, 3] - keep[:, 1]).clip(0) / (width * height)
        np.testing.assert_allclose(row, reference_stats(list(areas)), rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------ detector


@pytest.fixture(scope="module")
def random_detector(tmp_path_factory) -> tuple[Any, Path]:
    """A randomly initialised RetinaFace and its state saved as ``{"state_dict": ...}``."""
    from facenas.models.detection import RetinaFace

    torch.manual_seed(0)
    model = RetinaFace().eval()
    path = tmp_path_factory.mktemp("detector") / "random.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, path


def test_detector_features_are_the_gap_of_the_fpn_levels(dataset, random_detector, tmp_path):
    from facenas.datamodules.detection.transforms import normalize, pad_to_square, resize
    from facenas.models.detection.pretrained import export_weights

    model, path = random_detector
    extractor = create_extractor("detector", weights=str(path), batch_size=2)  # batches of 2, 2, 1
    assert extractor.dim == 240 and extractor.size == 320
    feats = extract_features(dataset, extractor)
    assert feats.shape == (5, 240) and feats.dtype == np.float32 and np.isfinite(feats).all()

    pixels = torch.from_numpy(np.asarray(Image.open(dataset[4].image).convert("RGB")).copy()).permute(2, 0, 1)
    x = normalize(resize(pad_to_square(pixels), (320, 320)))[None]
    with torch.no_grad():
        levels = model.net.fpn(model.net.backbone(x))
    direct = torch.cat([f.mean(dim=(2, 3)) for f in levels], 1)[0].numpy()
    assert [f.shape[1] for f in levels] == [80, 80, 80]
    np.testing.assert_allclose(feats[4], direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats[0], feats[4])  # different images, different features

    # the exported half-precision file is the same detector, another version
    exported = tmp_path / "exported.pt"
    export_weights(path, exported)
    half = DetectorFeatures(exported, batch_size=8)
    np.testing.assert_allclose(half.extract(dataset[4:]), feats[4:], rtol=0.05, atol=0.02)
    assert half.version != extractor.version and "sha256=" in half.version and "320px" in half.version
    assert create_extractor(f"detector:{path}").version == extractor.version  # name:argument form


def test_detector_default_weights_are_the_shipped_detector_or_a_clear_error():
    from facenas.models.detection.pretrained import SHIPPED, WEIGHTS_DIR

    if (WEIGHTS_DIR / SHIPPED["wider_subset_320"][0]).is_file():
        assert create_extractor("detector").dim == 240
    else:
        with pytest.raises(FileNotFoundError, match="wider_subset_320"):
            create_extractor("detector")


def test_detector_rejects_a_file_that_is_not_a_detector(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no RetinaFace network tensors"):
        DetectorFeatures(path)


# ------------------------------------------------------------------ timm


def test_timm_features_from_local_weights(dataset, tmp_path):
    import timm
    import timm.data

    torch.manual_seed(1)
    full = timm.create_model("resnet18", pretrained=False)  # with its classifier, as files come
    weights = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), weights)
    extractor = create_extractor("timm:resnet18", weights=str(weights), batch_size=4)
    assert extractor.dim == 512 and "resnet18" in extractor.version and "sha256=" in extractor.version
    feats = extract_features(dataset[:2], extractor)
    assert feats.shape == (2, 512) and np.isfinite(feats).all()

    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    reference.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")})
    config = timm.data.resolve_data_config({}, model=reference)
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        direct = reference(torch.stack([transform(Image.open(s.image).convert("RGB")) for s in dataset[:2]]))
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-5)


def test_timm_without_weights_is_an_error_unless_random_is_allowed(dataset, tmp_path):
    with pytest.raises(ValueError, match="allow_random=True"):
        create_extractor("timm:resnet18")
    a = create_extractor("timm:resnet18", allow_random=True)
    b = create_extractor("timm:resnet18", allow_random=True)
    assert "random-seed=0" in a.version and a.version == b.version
    np.testing.assert_array_equal(a.extract(dataset[:1]), b.extract(dataset[:1]))  # seeded: reproducible
    other = tmp_path / "resnet34.pth"
    import timm

    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match="do not fit timm:resnet18"):
        create_extractor("timm:resnet18", weights=str(other))
    with pytest.raises(ValueError, match="not a timm model"):
        create_extractor("timm:no_such_net", allow_random=True)


# ------------------------------------------------------------------ registry


def test_unknown_extractor_names_the_registered_ones():
    with pytest.raises(UnknownName, match="label_stats.*detector.*timm"):
        create_extractor("resnet_stats")
    with pytest.raises(ValueError, match=r"timm:<argument>"):
        create_extractor("timm")
    with pytest.raises(ValueError, match="unexpected keyword"):
        create_extractor("label_stats", size=3)
    assert {"label_stats", "detector", "timm"} <= set(EXTRACTORS.names())


# ------------------------------------------------------------------ cache


class Counting(FeatureExtractor):
    """Two features per image (number of boxes, length of the name); counts the images extracted."""

    name = "test_counting"
    calls = 0

    def __init__(self, tag: str = "a") -> None:
        self.tag = tag

    @property
    def version(self) -> str:
        return f"test_counting:{self.tag}"

    @property
    def dim(self) -> int:
        return 2

    def extract(self, samples: Sequence[DetectionSample]) -> np.ndarray:
        type(self).calls += 1
        return np.array([[len(s), len(s.name)] for s in samples], dtype=np.float32)


if "test_counting" not in EXTRACTORS:
    EXTRACTORS.register("test_counting", Counting)


def test_cache_is_reused_and_invalidated_when_the_image_list_changes(dataset, tmp_path):
    cache = tmp_path / "cache"
    Counting.calls = 0
    first = extract_features(dataset, "test_counting", cache_dir=cache, dataset_key="toy")
    assert Counting.calls == 1
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    mtime = files[0].stat().st_mtime_ns

    shuffled = [dataset[i] for i in (3, 0, 4, 2, 1)]
    again = extract_features(shuffled, "test_counting", cache_dir=cache, dataset_key="toy")
    assert Counting.calls == 1 and files[0].stat().st_mtime_ns == mtime  # read, not recomputed
    np.testing.assert_array_equal(again, first[[3, 0, 4, 2, 1]])  # rows follow the samples' order

    fewer = extract_features(dataset[:4], "test_counting", cache_dir=cache, dataset_key="toy")
    assert Counting.calls == 2 and fewer.shape == (4, 2)  # another image list: recomputed, file replaced
    assert list(cache.iterdir()) == files
    extract_features(dataset[:4], "test_counting", cache_dir=cache, dataset_key="toy")
    assert Counting.calls == 2

    extract_features(dataset[:4], Counting("b"), cache_dir=cache, dataset_key="toy")  # another version
    extract_features(dataset[:4], "test_counting", cache_dir=cache, dataset_key="other")  # another dataset
    assert Counting.calls == 4 and len(list(cache.iterdir())) == 3

    with pytest.raises(ValueError, match="dataset_key"):
        extract_features(dataset, "test_counting", cache_dir=cache)
    with pytest.raises(ValueError, match="occurs twice"):
        extract_features([dataset[0], dataset[0]], "test_counting", cache_dir=cache, dataset_key="dup")


def test_cache_round_trips_real_features(dataset, tmp_path):
    direct = extract_features(dataset, LabelStats())
    cached = extract_features(dataset, LabelStats(), cache_dir=tmp_path, dataset_key="toy")
    reread = extract_features(dataset, LabelStats(), cache_dir=tmp_path, dataset_key="toy")
    np.testing.assert_array_equal(direct, cached)
    np.testing.assert_array_equal(direct, reread)


# ------------------------------------------------------------------ privacy boundary


def walk(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every value reachable from ``obj``: dataclass fields, attributes, containers, and what
    :meth:`ClientSummary.to_dict` sends."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    children: list[Any] = []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children += [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if isinstance(obj, ClientSummary):
        children.append(obj.to_dict())
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        children += list(vars(obj).values())
    if isinstance(obj, dict):
        children += [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set)):
        children += list(obj)
    for child in children:
        yield from walk(child, seen)


def test_client_summary_holds_no_per_image_data(dataset, tmp_path):
    n = len(dataset)
    summary = client_summary(dataset, "label_stats")
    assert summary.dim == 7 != n  # an image count that differs from the feature dimension
    assert summary.num_images == n and summary.extractor_version == LabelStats().version

    feats = extract_features(dataset, "label_stats")
    np.testing.assert_allclose(summary.mean, feats.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(summary.std, feats.std(0), rtol=1e-5, atol=1e-7)

    paths = [s.image for s in dataset] + [s.name for s in dataset] + [str(tmp_path), str(Path(dataset[0].image).parent)]
    values = list(walk(summary))
    assert {type(v) for v in values} <= {ClientSummary, np.ndarray, dict, list, str, int, float}
    for value in values:
        if isinstance(value, np.ndarray):
            assert value.ndim <= 2 and n not in value.shape, value.shape
        elif isinstance(value, (list, tuple)):
            assert len(value) != n
        elif isinstance(value, str):
            assert not any(p in value for p in paths), value
    assert not any(p in repr(summary) for p in paths)
    assert not any(isinstance(v, (Image.Image, torch.Tensor, DetectionSample)) for v in values)

    # fixed size: another number of images gives the same shapes
    smaller = client_summary(dataset[:3], "label_stats")
    assert smaller.vector().shape == summary.vector().shape == (14,) and smaller.num_images == 3
    assert ClientSummary.from_dict(summary.to_dict()) == summary
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.num_images = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        summary.mean[0] = 1.0
