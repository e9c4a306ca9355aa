"""The Python API: FaceDetector on real WIDER photos through every input type (and against
`facenas predict` on the same weights), and FaceEmbedder against `facenas predict`'s embeddings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import data_path, run_facenas

CONFIG = Path(__file__).resolve().parents[1] / "configs"
PHOTOS = ("0--Parade/0_Parade_Parade_0_616.jpg", "20--Family_Group/20_Family_Group_Family_Group_20_447.jpg")


def wider_photo(index: int = 0) -> Path:
    return data_path("widerface", "WIDER_val", "images", PHOTOS[index])


@pytest.fixture(scope="module")
def detector():
    from facenas import FaceDetector

    return FaceDetector.from_pretrained("wider_subset_320", device="cpu")


def same(a, b) -> bool:
    return (
        np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.scores, b.scores)
        and np.array_equal(a.landmarks, b.landmarks)
        and a.image_size == b.image_size
    )


def close(a, b) -> bool:
    """The same faces up to float rounding (a batch of several images runs other kernels than one)."""
    return (
        len(a) == len(b)
        and np.allclose(a.boxes, b.boxes, atol=1e-3)
        and np.allclose(a.scores, b.scores, atol=1e-5)
        and np.allclose(a.landmarks, b.landmarks, atol=1e-3)
        and a.image_size == b.image_size
    )


def test_a_photo_gives_the_same_faces_as_a_path_a_pil_image_and_an_array(detector):
    photo = wider_photo()
    by_path = detector.detect(photo)
    assert len(by_path) >= 3 and (by_path.scores >= 0.5).all()
    assert by_path.boxes.shape == (len(by_path), 4) and by_path.landmarks.shape == (len(by_path), 5, 2)
    assert by_path.image_size == (820, 1024)
    with Image.open(photo) as image:
        by_pil = detector.detect(image)
        rgb = np.asarray(image.convert("RGB"))
    assert same(by_path, by_pil)
    assert same(by_path, detector.detect(rgb))
    # boxes in the photo's pixels, clipped to it
    assert (by_path.boxes[:, [0, 2]] <= 1024).all() and (by_path.boxes[:, [1, 3]] <= 820).all()
    assert (by_path.boxes >= 0).all()


def test_bgr_arrays_need_the_flag(detector):
    """Arrays are RGB; OpenCV's BGR arrays give the same faces with bgr=True, and other faces
    without it (the network sees blue skin)."""
    with Image.open(wider_photo()) as image:
        rgb = np.asarray(image.convert("RGB"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    want = detector.detect(rgb)
    assert same(want, detector.detect(bgr, bgr=True))
    unflagged = detector.detect(bgr)
    assert not same(want, unflagged)
    # a path or a PIL image knows its own channel order: the flag does not apply to them
    assert same(want, detector.detect(wider_photo(), bgr=True))


def test_a_list_of_photos_of_different_sizes_gives_each_what_it_gives_alone(detector):
    first, second = wider_photo(0), wider_photo(1)
    with Image.open(second) as image:
        small = np.asarray(image.convert("RGB").resize((512, 423)))
    results = detector.detect([first, second, small, first])
    assert isinstance(results, list) and len(results) == 4
    for got, alone in zip(results, [first, second, small, first]):
        assert close(got, detector.detect(alone))
    assert results[2].image_size == (423, 512)


def test_pixels_that_would_be_guessed_at_are_refused(detector):
    rgb = np.zeros((64, 80, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(rgb.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"shape \(64, 80, 4\)"):
        detector.detect(np.zeros((64, 80, 4), np.uint8))
    with pytest.raises(ValueError, match="image 1: a float64 array"):
        detector.detect([rgb, rgb.astype(float)])
    with pytest.raises(TypeError, match="a path, a PIL image or an HxWx3 uint8 array"):
        detector.detect(42)
    grey = detector.detect(rgb[:, :, 0])  # HxW grey: the same pixels in the three channels
    assert same(grey, detector.detect(rgb))


def test_the_api_and_predict_give_the_same_faces(detector, tmp_path):
    """`facenas predict` with the shipped detector on a photo file: detections.jsonl holds the
    API's faces (to the printed precision, identical), the WIDER file every candidate down to
    0.02 with the same faces above 0.5, and a drawn copy under the photo's own name."""
    photo = wider_photo()
    out = run_facenas(
        "predict",
        "--config", str(CONFIG / "detection/pretrained.yaml"),
        "--data.init_args.images", str(photo),
        "--data.init_args.num_workers", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    predictions = tmp_path / "runs/pretrained/version_0/predictions"
    (line,) = (predictions / "detections.jsonl").read_text().splitlines()
    record = json.loads(line)
    want = detector.detect(photo)
    assert record["image"] == photo.name and (record["height"], record["width"]) == want.image_size
    assert record["faces"] == want.to_list()
    wider = (predictions / photo.with_suffix(".txt").name).read_text().splitlines()
    rows = np.array([[float(v) for v in row.split()] for row in wider[2:]])
    assert wider[0] == photo.stem and int(wider[1]) == len(rows) > len(want)
    assert rows[:, 4].min() >= 0.02
    sure = rows[rows[:, 4] >= 0.5]
    np.testing.assert_allclose(sure[:, :2], want.boxes[:, :2], atol=0.051)
    np.testing.assert_allclose(sure[:, 4], want.scores, atol=1e-5)
    with Image.open(predictions / photo.name) as drawn:
        assert drawn.size == (1024, 820) and drawn.format == "JPEG"


def test_from_pretrained_takes_an_exported_weights_file(detector, tmp_path):
    import torch

    from facenas import FaceDetector
    from facenas.models.detection.pretrained import export_weights

    torch.save({"state_dict": detector.model.state_dict()}, tmp_path / "model.ckpt")
    export_weights(tmp_path / "model.ckpt", tmp_path / "detector.pt")
    again = FaceDetector.from_pretrained(str(tmp_path / "detector.pt"), device="cpu")
    assert same(again.detect(wider_photo()), detector.detect(wider_photo()))
    with pytest.raises(FileNotFoundError):
        FaceDetector.from_pretrained(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="not a RetinaFace checkpoint"):
        FaceDetector.from_checkpoint(tmp_path / "model.ckpt")  # no hyper-parameters in it


def test_from_checkpoint_rebuilds_the_detector_and_its_resize(detector, tmp_path):
    import torch

    from facenas import FaceDetector

    model = detector.model
    checkpoint = {
        "state_dict": {f"net.{k}": v for k, v in model.net.state_dict().items()},
        "hyper_parameters": {**dict(model.hparams), "pretrained": "/nowhere/backbone.pt"},
        "datamodule_hyper_parameters": {"eval_short_side": 320, "eval_max_side": 480},
    }
    torch.save(checkpoint, tmp_path / "best.ckpt")
    loaded = FaceDetector.from_checkpoint(tmp_path / "best.ckpt", device="cpu")
    assert (loaded.transform.short_side, loaded.transform.max_side) == (320, 480)
    want = FaceDetector(model, short_side=320, max_side=480, device="cpu").detect(wider_photo())
    assert same(loaded.detect(wider_photo()), want)


def test_from_onnx_gives_the_pytorch_detections(detector, tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("facenas.export")
    from torchvision.ops import box_iou

    from facenas import FaceDetector

    path = export.export_detector(detector.model, tmp_path / "detector.onnx")
    onnx = FaceDetector.from_onnx(path, threads=1)
    got, want = onnx.detect(wider_photo()), detector.detect(wider_photo())
    assert len(got) == len(want) >= 3
    import torch

    iou = box_iou(torch.from_numpy(got.boxes), torch.from_numpy(want.boxes)).diagonal()
    assert (iou >= 0.99).all()
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    assert same(FaceDetector.from_pretrained(str(path), threads=1).detect(wider_photo()), got)
    pixels = export.export_detector(detector.model, tmp_path / "pixels.onnx", pixels=True)
    with pytest.raises(ValueError, match="exported with --pixels"):
        FaceDetector.from_onnx(pixels)


# ---------------------------------------------------------------------------- recognition


@pytest.fixture(scope="module")
def faceid_run(tmp_path_factory):
    """A FaceID model trained for two batches on synthetic identities at 32 px (its checkpoint),
    and a folder of unlabelled crops: two people in their own folders and one loose crop."""
    import yaml

    root = tmp_path_factory.mktemp("faceid")
    config = {
        "model": {
            "class_path": "facenas.models.recognition.FaceID",
            "init_args": {"backbone": "dpn_search_small_000", "embedding_dim": 16, "optimizer": "adamw"},
        },
        "data": {
            "class_path": "facenas.datamodules.recognition.FaceIDDataModule",
            "init_args": {
                "synthetic_identities": 8,
                "synthetic_images_per_identity": 4,
                "synthetic_size": 32,
                "image_size": 32,
                "split_by": "image",
                "split_ratios": [2, 1, 1],
                "batch_size": 8,
                "num_workers": 0,
            },
        },
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "enable_progress_bar": False,
            "accelerator": "cpu",
            "callbacks": str(CONFIG / "callbacks/recognition.yaml"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "id"},
            },
        },
        "test_after_fit": False,
        "seed_everything": 0,
    }
    path = root / "id.yaml"
    path.write_text(yaml.safe_dump(config))
    fit = run_facenas("fit", "--config", str(path), cwd=root)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (ckpt,) = (root / "runs/id/version_0/checkpoints").glob("last.ckpt")
    synthetic = sorted((root / "data").rglob("*.png")) + sorted((root / "data").rglob("*.jpg"))
    crops = root / "crops"
    for i, source in enumerate(synthetic[:5]):
        target = crops / ("ann" if i < 2 else "bob" if i < 4 else "") / f"{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("RGB").resize((40, 44)).save(target)
    return path, ckpt, crops


def test_face_embedder_equals_the_embeddings_predict_writes_for_an_unlabelled_folder(faceid_run):
    """`facenas predict` on a folder of crops without labels writes embeddings.npy + meta.csv
    (identity: the crop's folder); FaceEmbedder gives the same rows; `facenas eval fairness`
    reads the pair (no group: the fairness metrics are undefined, the error is not)."""
    from facenas import FaceEmbedder

    config, ckpt, crops = faceid_run
    root = config.parent
    out = run_facenas(
        "predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.predict_images", str(crops),
        cwd=root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (emb_file,) = (root / "runs/id").glob("version_*/embeddings/embeddings.npy")
    written = np.load(emb_file)
    with open(emb_file.parent / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["image"]).relative_to(crops).as_posix() for r in rows] == [
        "4.png", "ann/0.png", "ann/1.png", "bob/2.png", "bob/3.png",
    ]  # fmt: skip
    assert [r["identity"] for r in rows] == ["4", "ann", "ann", "bob", "bob"]
    assert all(r["gender"] == "" for r in rows)

    embedder = FaceEmbedder.from_checkpoint(ckpt, device="cpu")
    assert embedder.image_size == 32 and embedder.dim == 16
    got = embedder.embed([r["image"] for r in rows])
    assert got.shape == (5, 16) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(got, written, atol=1e-5)
    # the same crops as PIL images and uint8 arrays (and one crop alone)
    images = [Image.open(r["image"]) for r in rows]
    np.testing.assert_allclose(embedder.embed(images), got, atol=1e-6)
    np.testing.assert_allclose(embedder.embed([np.asarray(i.convert("RGB")) for i in images]), got, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(rows[0]["image"]), got[:1], atol=1e-6)

    report = run_facenas(
        "eval", "fairness", "--embeddings", str(emb_file), "--meta", str(emb_file.parent / "meta.csv"), "--json",
        cwd=root,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    result = json.loads(report.stdout.strip().splitlines()[-1])
    assert result["probes"] == 4  # the loose crop is an identity of one image: skipped
    assert result["error"] is not None and "fairness metrics are undefined" in " ".join(result["undefined"])


def test_unlabelled_crops_that_are_not_there_are_refused_before_anything_is_written(faceid_run, tmp_path):
    config, ckpt, _ = faceid_run
    for given, message in (
        (str(tmp_path / "nothere"), "no such file or folder"),
        (str(tmp_path), "no image files"),
    ):
        out = run_facenas(
            "predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.predict_images", given,
            cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert f"data.init_args.predict_images: {given!r}: {message}" in out.stderr
        assert not (tmp_path / "runs").exists()


def test_import_facenas_stays_light_until_the_api_is_used():
    import subprocess
    import sys

    code = (
        "import sys, facenas; assert 'torch' not in sys.modules, 'torch'; "
        "from facenas import FaceDetector, FaceEmbedder, Detections; assert 'torch' in sys.modules; "
        "print(FaceDetector.__module__, FaceEmbedder.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["facenas.inference.detector", "facenas.inference.embedder"]
