"""Face-detection domains from real photos: boxes and landmarks move with the pixels, photometric
families leave the boxes alone, seeds reproduce images byte for byte, faces that leave are counted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facenas.core.registry import UnknownName
from facenas.datamodules.detection.domains import (
    DOMAIN_FAMILIES,
    PRESETS,
    Domain,
    FaceArrays,
    build_domain,
    settle,
)
from facenas.datamodules.detection.formats import read_retinaface, read_wider

from .conftest import data_path

GEOMETRIC = {
    "tiny_crowd": {},
    "portrait": {},
    "fisheye": {"strength": 0.8},
    "rotate": {"angles": [90]},
    "rotate_180": {"angles": [180]},
    "rotate_270": {"angles": [270]},
}
PHOTOMETRIC = ["low_light", "fog", "rain", "snow", "surveillance", "mask"]


def _scene(seed: int = 0, width: int = 160, height: int = 120, zoom: int = 1) -> tuple[np.ndarray, FaceArrays]:
    """A textured image with three faces (one an ignore region), landmarks inside each box;
    ``zoom`` scales image and faces."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height * zoom, width * zoom, 3), dtype=np.uint8)
    boxes = zoom * np.array([[20, 15, 60, 65], [90, 40, 120, 80], [130, 90, 150, 112]], np.float32)
    marks = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)
    landmarks = boxes[:, None, :2] + marks[None] * (boxes[:, None, 2:] - boxes[:, None, :2])
    landmarks[2] = np.nan
    return image, FaceArrays(boxes, landmarks, np.array([False, False, True]))


def _family(name: str) -> str:
    return name.split("_")[0] if name.startswith("rotate") else name


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_families_move_boxes_with_the_pixels(name):
    """Warp an image holding one filled box with the same draw: the warped mask's bounding box is
    the transformed box (IoU >= 0.9), and the landmarks stay inside their box."""
    image, faces = _scene(zoom=3)
    for k in range(2):  # one face at a time, so that its mask is alone in the image
        one = faces.select(np.arange(len(faces)) == k)
        x1, y1, x2, y2 = one.boxes[0].astype(int)
        canvas = np.zeros_like(image)
        canvas[y1:y2, x1:x2] = 255
        fn = DOMAIN_FAMILIES.get(_family(name))
        out, moved, dropped = fn(canvas, one, np.random.default_rng(3), **GEOMETRIC[name])
        if dropped:  # a portrait crop of the other face may cut this one off
            assert name == "portrait" and len(moved) == 0
            continue
        ys, xs = np.nonzero(out[..., 0] > 127)
        assert len(xs), name
        from_pixels = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        if name == "tiny_crowd":  # four copies: the first tile's copy is the first face
            tile = (xs < out.shape[1] / 2) & (ys < out.shape[0] / 2)
            from_pixels = np.array([xs[tile].min(), ys[tile].min(), xs[tile].max() + 1, ys[tile].max() + 1])
            assert len(moved) == 4
        assert _iou(moved.boxes[0], from_pixels) >= 0.9, (name, moved.boxes[0], from_pixels)
        lo, hi = moved.boxes[:, None, :2], moved.boxes[:, None, 2:]
        assert ((moved.landmarks >= lo) & (moved.landmarks <= hi)).all(), name
        assert (moved.boxes[:, 2] <= out.shape[1]).all() and (moved.boxes[:, 3] <= out.shape[0]).all()


def test_geometric_families_keep_landmarks_inside_boxes_and_ignore_flags():
    image, faces = _scene()
    for name, args in GEOMETRIC.items():
        out, moved, dropped = DOMAIN_FAMILIES.get(_family(name))(image, faces, np.random.default_rng(1), **args)
        assert len(moved) + dropped == len(faces) * (4 if name == "tiny_crowd" else 1), name
        shown = np.isfinite(moved.landmarks).all((1, 2))
        lo, hi = moved.boxes[shown, None, :2], moved.boxes[shown, None, 2:]
        assert ((moved.landmarks[shown] >= lo) & (moved.landmarks[shown] <= hi)).all(), name
        assert moved.ignore.sum() >= 1 or dropped, name  # the ignore region travels as one
        assert out.dtype == np.uint8 and out.ndim == 3


def test_tiny_crowd_mosaic_of_other_photos_moves_each_photos_boxes():
    """Four photos of different sizes, one filled box each: every tile's box is where its mask
    went."""
    photos = []
    for k, (w, h) in enumerate([(480, 360), (300, 500), (600, 240), (360, 360)]):
        picture = np.zeros((h, w, 3), np.uint8)
        box = np.array([[w * 0.2 + 10 * k, h * 0.3, w * 0.6, h * 0.8]], np.float32)
        x1, y1, x2, y2 = box[0].round().astype(int)
        picture[y1:y2, x1:x2] = 255
        photos.append((picture, FaceArrays(box, None, None)))
    out, moved, dropped = DOMAIN_FAMILIES.get("tiny_crowd")(
        *photos[0], np.random.default_rng(5), scale=0.35, tiles=photos[1:]
    )
    assert dropped == 0 and len(moved) == 4 and out.shape == (2 * 126, 2 * 168, 3)
    for cell, box in enumerate(moved.boxes):
        region = np.zeros(out.shape[:2], bool)
        region[(cell // 2) * 126 : (cell // 2 + 1) * 126, (cell % 2) * 168 : (cell % 2 + 1) * 168] = True
        ys, xs = np.nonzero((out[..., 0] > 127) & region)
        assert _iou(box, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])) >= 0.9, cell


def test_build_domain_mosaics_other_images_of_the_subset(tmp_path):
    data = data_path("widerface").parent
    folder = build_domain("wider_val", ["tiny_crowd"], seed=0, images=4, root=tmp_path, data_root=data)
    samples = read_wider(folder / "wider_face_bbx_gt.txt", folder / "images", verify="none")
    source = read_wider(data / "widerface/wider_face_split/wider_face_val_bbx_gt.txt", verify="none")[:4]
    meta = json.loads((folder / "meta.json").read_text())
    assert sum(len(s) for s in samples) + meta["dropped"] == 4 * sum(len(s) for s in source)


def test_rotation_by_180_maps_boxes_exactly():
    image, faces = _scene()
    out, moved, dropped = DOMAIN_FAMILIES.get("rotate")(image, faces, np.random.default_rng(0), angles=[180])
    assert dropped == 0 and out.shape == image.shape
    np.testing.assert_allclose(moved.boxes[0], [160 - 60, 120 - 65, 160 - 20, 120 - 15])
    assert (out == image[::-1, ::-1]).all()


def test_portrait_face_fills_the_asked_share():
    image, faces = _scene(width=400, height=300)
    faces = FaceArrays(faces.boxes * 2.5, faces.landmarks * 2.5, faces.ignore)
    out, moved, _ = DOMAIN_FAMILIES.get("portrait")(image, faces, np.random.default_rng(0), fill=0.3)
    face = (moved.boxes[:, 2:] - moved.boxes[:, :2]).prod(1).max()
    assert face / (out.shape[0] * out.shape[1]) == pytest.approx(0.3, rel=0.1)


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_families_leave_boxes_unchanged(name):
    image, faces = _scene()
    out, moved, dropped = DOMAIN_FAMILIES.get(name)(image, faces, np.random.default_rng(0))
    assert dropped == 0 and out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(moved.boxes, faces.boxes)
    np.testing.assert_array_equal(moved.landmarks, faces.landmarks)
    assert not np.array_equal(out, image), name  # the pixels did change


def test_low_light_darkens_and_fog_brightens():
    image, faces = _scene()
    dark, _, _ = DOMAIN_FAMILIES.get("low_light")(image, faces, np.random.default_rng(0))
    hazy, _, _ = DOMAIN_FAMILIES.get("fog")(image, faces, np.random.default_rng(0))
    assert dark.mean() < 0.4 * image.mean()
    assert hazy.std() < image.std() and hazy.mean() > image.mean()


def test_mask_covers_the_lower_face_only():
    image = np.full((120, 160, 3), 40, np.uint8)
    _, faces = _scene()
    out, _, _ = DOMAIN_FAMILIES.get("mask")(image, faces, np.random.default_rng(0))
    changed = (out != image).any(-1)
    x1, y1, x2, y2 = faces.boxes[0].astype(int)
    mid = (y1 + y2) // 2
    assert changed[mid:y2, x1:x2].mean() > 0.3 and changed[y1 : mid - 10, x1:x2].mean() == 0
    assert not changed[faces.boxes[2, 1].astype(int) :, faces.boxes[2, 0].astype(int) :].any()  # ignore region


def test_loose_boxes_move_boxes_but_not_pixels():
    image, faces = _scene()
    out, moved, _ = DOMAIN_FAMILIES.get("loose_boxes")(image, faces, np.random.default_rng(0), grow=0.2, jitter=0.1)
    assert out is image
    size = faces.boxes[:2, 2:] - faces.boxes[:2, :2]
    assert (np.abs(moved.boxes[:2] - faces.boxes[:2]) <= 0.21 * np.tile(size, 2) + 1e-4).all()
    assert not np.allclose(moved.boxes, faces.boxes)


def test_a_face_that_leaves_the_image_is_dropped_and_counted():
    faces = FaceArrays(np.array([[-30, 10, 10, 50], [5, 5, 25, 25], [90, 90, 130, 130]]), None, None)
    kept, dropped = settle(faces, 100, 100)
    assert dropped == 2 and len(kept) == 1
    np.testing.assert_array_equal(kept.boxes, [[5, 5, 25, 25]])
    _, faces = _scene()
    out, moved, dropped = DOMAIN_FAMILIES.get("loose_boxes")(
        np.zeros((120, 160, 3), np.uint8), FaceArrays([[150, 110, 200, 160]], None, None), np.random.default_rng(0)
    )
    assert dropped == 1 and len(moved) == 0


def test_same_seed_same_bytes_and_other_seed_other_bytes():
    image, faces = _scene()
    steps = ["tiny_crowd", {"family": "fisheye", "args": {"strength": 0.5}}, "low_light", "rain", "surveillance"]
    a = Domain(steps, seed=7).apply(image, faces, 3)
    b = Domain(steps, seed=7).apply(image, faces, 3)
    c = Domain(steps, seed=8).apply(image, faces, 3)
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1].boxes, b[1].boxes) and a[2] == b[2]
    assert a[0].tobytes() != c[0].tobytes()
    torch = pytest.importorskip("torch")
    chw, moved, dropped = Domain(steps, seed=7).apply(torch.from_numpy(image).permute(2, 0, 1), faces, 3)
    assert chw.shape[0] == 3 and chw.permute(1, 2, 0).numpy().tobytes() == a[0].tobytes() and dropped == a[2]


def test_domain_spec_errors_name_the_culprit():
    with pytest.raises(UnknownName, match="unknown domain family 'haze'.*fog"):
        Domain(["haze"])
    with pytest.raises(ValueError, match="domain family 'fog'.*unexpected keyword argument 'depth'"):
        Domain([{"family": "fog", "args": {"depth": 1}}])
    assert Domain("rotated").steps == (("rotate", {"angles": [90, 180, 270]}),)
    assert set(PRESETS) >= {"tiny_crowd", "portrait", "fisheye", "dark", "fog", "masked", "weak_labels"}


def test_build_domain_from_real_wider_images(tmp_path):
    data = data_path("widerface").parent
    families = ["fisheye", "masked", "fog"]
    folder = build_domain("wider_val", families, seed=1, images=2, root=tmp_path, data_root=data)
    assert build_domain("wider_val", families, seed=1, images=2, root=tmp_path, data_root=data) == folder
    other = build_domain("wider_val", families, seed=2, images=2, root=tmp_path, data_root=data)
    assert other != folder
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["built"] == 2 and meta["source"] == "wider_val"
    samples = read_wider(folder / "wider_face_bbx_gt.txt", folder / "images", verify="full")
    source = read_wider(data / "widerface/wider_face_split/wider_face_val_bbx_gt.txt", verify="none")[:2]
    assert [s.name for s in samples] == [s.name for s in source]
    assert sum(len(s) for s in samples) + meta["dropped"] == sum(len(s) for s in source)
    assert sum(s.ignore.sum() for s in samples) >= 1 or meta["dropped"]
    labels = read_retinaface(folder / "label.txt", folder / "images", verify="none")
    np.testing.assert_allclose(labels[0].boxes, samples[0].boxes, atol=0.01)
    rebuilt = (folder / "images" / samples[0].name).read_bytes()
    again = build_domain("wider_val", families, seed=1, images=2, root=tmp_path / "again", data_root=data)
    assert (again / "images" / samples[0].name).read_bytes() == rebuilt
    with pytest.raises(ValueError, match="unknown domain source 'wider_test'"):
        build_domain("wider_test", families, root=tmp_path, data_root=data)


def test_data_module_reads_a_domain(tmp_path):
    from facenas.datamodules.detection import FaceDetectionDataModule

    data = data_path("widerface").parent
    spec = {"source": "wider_val", "families": ["rotated"], "seed": 0, "images": 3, "root": str(tmp_path)}
    spec["data_root"] = str(data)
    module = FaceDetectionDataModule(domain=spec, split_file=str(tmp_path / "split.json"), split_ratios=(1, 1, 1))
    module.prepare_data()
    module.setup("fit")
    assert sum(len(v) for v in module.splits.values()) == 3
    assert all(s.image.startswith(str(tmp_path)) for v in module.splits.values() for s in v)
    with pytest.raises(ValueError, match="unknown domain key 'family'"):
        FaceDetectionDataModule(domain={"family": "fog"})
    with pytest.raises(ValueError, match="domain and format 'wider' are both set"):
        FaceDetectionDataModule(format="wider", train_annotations="x.txt", domain={"families": ["fog"]})
    with pytest.raises(UnknownName, match="unknown domain family 'haze'"):
        FaceDetectionDataModule(domain={"families": ["haze"]})


def test_geometric_families_take_images_and_tiles_without_faces():
    """A photo without faces (WIDER has some) is a valid tile and a valid image."""
    image, faces = _scene()
    empty = FaceArrays(np.zeros((0, 4)), None, None)
    out, moved, dropped = DOMAIN_FAMILIES.get("tiny_crowd")(
        image, faces, np.random.default_rng(0), tiles=[(image, empty)] * 3
    )
    assert len(moved) + dropped == len(faces)
    for name, args in GEOMETRIC.items():
        _, kept, lost = DOMAIN_FAMILIES.get(_family(name))(image, empty, np.random.default_rng(0), **args)
        assert len(kept) == 0 and lost == 0, name


def test_build_domain_start_takes_a_later_window_of_the_source(tmp_path):
    data = data_path("widerface").parent
    source = read_wider(data / "widerface/wider_face_split/wider_face_val_bbx_gt.txt", verify="none")
    first = build_domain("wider_val", [], images=2, root=tmp_path, data_root=data)
    later = build_domain("wider_val", [], images=2, start=len(source) - 1, root=tmp_path, data_root=data)
    assert later != first
    names = [s.name for s in read_wider(later / "wider_face_bbx_gt.txt", later / "images", verify="none")]
    assert names == [source[-1].name, source[0].name]  # wraps around at the end
    with pytest.raises(ValueError, match="start must be >= 0"):
        build_domain("wider_val", [], start=-1, root=tmp_path, data_root=data)


def test_builds_side_by_side_make_one_intact_domain(tmp_path):
    """Two processes building the same domain at once (hyperfd build --shard) both get it."""
    import multiprocessing

    data = data_path("widerface").parent
    args = ("wider_val", ["fog"], 0, 3, 0, str(tmp_path), str(data))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        folders = pool.starmap(build_domain, [args, args])
    assert folders[0] == folders[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folders[0].name]  # no partial folder left
    samples = read_wider(folders[0] / "wider_face_bbx_gt.txt", folders[0] / "images", verify="full")
    assert len(samples) == 3
