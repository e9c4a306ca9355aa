"""Export: the shipped detector in ONNX Runtime and TorchScript gives PyTorch's raw outputs
(within 1e-4) and PyTorch's detections (IoU >= 0.99, score within 1e-4) on real WIDER photos at two
input sizes, two images a batch; the post-processed graphs give ``RetinaFace.detect``'s detections;
a FaceID embedding network in ONNX Runtime gives PyTorch's embeddings; and ``facenas export``
writes the files and refuses bad input in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from facenas.datamodules.detection.transforms import normalize
from facenas.models.detection import RetinaFace
from facenas.models.detection.anchors import AnchorGrid

from .conftest import REPO, data_path, run_facenas

pytest.importorskip("onnxruntime")

from facenas.export import (
    OnnxDetectorSession,
    OnnxEmbedderSession,
    export_detector,
    export_embedder,
    load_torchscript,
)

# (height, width): a 4:3 photo size, and one that is no multiple of any stride
SIZES = ((480, 640), (357, 541))
PHOTOS = (
    "0--Parade/0_Parade_marchingband_1_20.jpg",
    "13--Interview/13_Interview_Interview_On_Location_13_3.jpg",
    "19--Couple/19_Couple_Couple_19_31.jpg",
    "20--Family_Group/20_Family_Group_Family_Group_20_1026.jpg",
)
RAW_ATOL = 1e-4
SCORE_ATOL = 1e-4
MIN_IOU = 0.99


def _pixels(path: Path, size: tuple[int, int]) -> np.ndarray:
    image = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image).copy()


@pytest.fixture(scope="module")
def pixel_batches() -> list[np.ndarray]:
    """Two batches of two real photos each, one per size of :data:`SIZES`: (2, H, W, 3) uint8 RGB."""
    folder = data_path("widerface", "WIDER_val", "images")
    paths = [folder / p for p in PHOTOS]
    if not all(p.is_file() for p in paths):  # another subset: its first four photos
        paths = sorted(folder.rglob("*.jpg"))[:4]
    return [np.stack([_pixels(p, size) for p in paths[2 * i : 2 * i + 2]]) for i, size in enumerate(SIZES)]


@pytest.fixture(scope="module")
def batches(pixel_batches) -> list[torch.Tensor]:
    """The same photos normalised as the data modules do: (2, 3, H, W) float32."""
    return [torch.stack([normalize(torch.from_numpy(p).permute(2, 0, 1)) for p in batch]) for batch in pixel_batches]


@pytest.fixture(scope="module")
def detector() -> RetinaFace:
    return RetinaFace(weights="wider_subset_320").eval()


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory) -> dict[str, Path]:
    """The four exports of the shipped detector: {onnx, onnx_post, torchscript, torchscript_post}."""
    folder = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
        for post in (False, True):
            name = fmt + ("_post" if post else "")
            out[name] = export_detector(detector, folder / f"{name}.{suffix}", format=fmt, postprocess=post)
    return out


def _numpy(det: dict) -> dict[str, np.ndarray]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in det.items()}


def assert_same_detections(got: dict, want: dict, conf_threshold: float, keep_top_k: int) -> int:
    """Every detection of either side, above the margin where a score within 1e-4 could fall on
    the other side of a cut, has a partner on the other side with IoU >= 0.99, score within 1e-4
    and landmarks within 1e-3 px (one to one). Returns the number compared."""
    got, want = _numpy(got), _numpy(want)
    floor = conf_threshold
    if keep_top_k in (len(got["scores"]), len(want["scores"])):  # cut by count: the cut is the lowest kept score
        floor = max(floor, float(got["scores"].min()), float(want["scores"].min()))
    compared = 0
    for a, b in ((got, want), (want, got)):
        iou = box_iou(torch.from_numpy(a["boxes"]), torch.from_numpy(b["boxes"])).numpy()
        close = np.abs(a["scores"][:, None] - b["scores"][None, :]) <= SCORE_ATOL
        free = np.ones(len(b["scores"]), dtype=bool)
        for i in np.argsort(-a["scores"], kind="stable"):
            if a["scores"][i] <= floor + 2 * SCORE_ATOL:
                continue
            candidates = np.where(close[i] & free & (iou[i] >= MIN_IOU))[0]
            assert len(candidates), (
                f"detection {a['boxes'][i]} score {a['scores'][i]:.5f} has no partner (best IoU {iou[i].max():.4f})"
            )
            j = candidates[np.argmax(iou[i, candidates])]
            free[j] = False
            np.testing.assert_allclose(a["landmarks"][i], b["landmarks"][j], atol=1e-3)
            compared += 1
    return compared // 2


def _split(image: np.ndarray, boxes, scores, marks, batch: int) -> list[dict]:
    image = np.asarray(image)
    return [
        {"boxes": boxes[image == b], "scores": scores[image == b], "landmarks": marks[image == b]} for b in range(batch)
    ]


def _check_all(dets: list[dict], want: list[dict], detector: RetinaFace, least: int = 10) -> None:
    h = detector.hparams
    assert len(dets) == len(want)
    counts = [assert_same_detections(d, w, h.conf_threshold, h.keep_top_k) for d, w in zip(dets, want)]
    assert min(counts) >= least  # real photos: many faces and candidates compared, not an empty match
    for d, w in zip(dets, want):  # the confident ones agree in number exactly
        assert (np.asarray(d["scores"]) >= 0.5).sum() == (w["scores"].numpy() >= 0.5).sum()


# ---------------------------------------------------------------------------------------- detector


def test_onnx_raw_outputs_match_pytorch(detector, exported, batches):
    session = OnnxDetectorSession(exported["onnx"], threads=1)
    assert not session.postprocessed
    for images in batches:
        with torch.no_grad():
            want = detector(images)
        got = session(images.numpy())
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=RAW_ATOL)


def test_onnx_raw_outputs_give_pytorchs_detections(detector, exported, batches):
    session = OnnxDetectorSession(exported["onnx"], threads=1)
    for images in batches:
        _check_all(session.detect(images.numpy()), detector.detect(images), detector)


def test_onnx_metadata_rebuilds_the_anchors_and_postprocessing(detector, exported):
    h = OnnxDetectorSession(exported["onnx"]).hparams
    for key in ("variances", "conf_threshold", "nms_iou", "pre_nms_top_k", "keep_top_k"):
        assert np.allclose(h[key], detector.hparams[key]), key
    for height, width in SIZES:
        grid = AnchorGrid(height, width, tuple(h["strides"]), tuple(tuple(s) for s in h["anchor_sizes"]))
        assert torch.equal(grid.anchors(), detector.anchors(height, width))
    assert h["mean"] == pytest.approx([0.485, 0.456, 0.406]) and h["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_onnx_postprocessed_graph_gives_pytorchs_detections(detector, exported, batches):
    session = OnnxDetectorSession(exported["onnx_post"], threads=1)
    assert session.postprocessed and session.output_names == ["image", "boxes", "scores", "landmarks"]
    for images in batches:
        image, boxes, scores, marks = session(images.numpy())
        assert np.all(np.diff(image) >= 0)  # grouped by image, each image's best first
        for b in range(len(images)):
            assert np.all(np.diff(scores[image == b]) <= 0)
        _check_all(_split(image, boxes, scores, marks, len(images)), detector.detect(images), detector)
        assert [len(d["scores"]) for d in session.detect(images.numpy())] == np.bincount(image, minlength=2).tolist()


@pytest.mark.parametrize("top_k", [40, 0], ids=["40-best", "every-anchor"])
def test_post_processed_exports_keep_the_pre_nms_top_k_as_pytorch(batches, tmp_path, top_k):
    """``pre_nms_top_k``: only the 40 best candidates enter NMS (fewer than pass 0.02 on these
    photos, so the cut matters), or all of them (0)."""
    model = RetinaFace(weights="wider_subset_320", pre_nms_top_k=top_k).eval()
    images = batches[1]
    with torch.no_grad():
        probabilities = model(images)[0].softmax(-1)[..., 1]
    assert (probabilities > model.hparams.conf_threshold).sum(1).min() > 40  # the 40-best cut binds
    want = model.detect(images)
    session = OnnxDetectorSession(export_detector(model, tmp_path / "top.onnx", postprocess=True), threads=1)
    _check_all(session.detect(images.numpy()), want, model, least=3)
    path = export_detector(model, tmp_path / "top.pt", format="torchscript", postprocess=True)
    with torch.no_grad():
        outputs = [o.numpy() for o in load_torchscript(path)[0](images)]
    _check_all(_split(*outputs, len(images)), want, model, least=3)


def test_onnx_postprocessed_graph_thresholds_and_caps_like_pytorch(exported, batches, tmp_path):
    """A detector with a higher threshold and a small cap: the graph applies both, per image."""
    model = RetinaFace(weights="wider_subset_320", conf_threshold=0.1, keep_top_k=4).eval()
    path = export_detector(model, tmp_path / "capped.onnx", postprocess=True)
    session = OnnxDetectorSession(path, threads=1)
    images = batches[0]
    image, boxes, scores, marks = session(images.numpy())
    want = model.detect(images)
    counts = np.bincount(image, minlength=2).tolist()
    assert counts == [len(w["scores"]) for w in want] and max(counts) == 4 and scores.min() > 0.1
    for got, w in zip(_split(image, boxes, scores, marks, 2), want):
        np.testing.assert_allclose(got["scores"], w["scores"].numpy(), atol=SCORE_ATOL)
        assert box_iou(torch.from_numpy(got["boxes"]), w["boxes"]).diagonal().min() >= MIN_IOU


def test_torchscript_gives_pytorchs_outputs_and_detections(detector, exported, batches):
    raw, h = load_torchscript(exported["torchscript"])
    post, h_post = load_torchscript(exported["torchscript_post"])
    assert h["graph"] == "raw" and h_post["graph"] == "postprocessed"
    for images in batches:
        want = detector.detect(images)
        with torch.no_grad():
            expected = detector(images)
            got = raw(images)
            image, boxes, scores, marks = post(images)
        for g, w in zip(got, expected):
            torch.testing.assert_close(g, w, rtol=0, atol=RAW_ATOL)
        _check_all(_split(image.numpy(), boxes.numpy(), scores.numpy(), marks.numpy(), len(images)), want, detector)


def test_landmarks_follow_the_network_through_every_export(batches, tmp_path):
    """The shipped detectors were trained without landmark labels (their landmark heads are
    zero), so landmarks get their own check with heads that are not."""
    model = RetinaFace(weights="wider_subset_320").eval()
    assert all(not h.weight.detach().any() for h in model.net.landmark_heads)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in model.net.landmark_heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.05)
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * 0.1)
    images = batches[1]
    with torch.no_grad():
        raw = model(images)[2]
    want = model.detect(images)
    assert float(raw.abs().max()) > 0.1
    raw_session = OnnxDetectorSession(export_detector(model, tmp_path / "raw.onnx"), threads=1)
    np.testing.assert_allclose(raw_session(images.numpy())[2], raw.numpy(), rtol=0, atol=RAW_ATOL)
    post = OnnxDetectorSession(export_detector(model, tmp_path / "post.onnx", postprocess=True), threads=1)
    _check_all(post.detect(images.numpy()), want, model)
    scripted, _ = load_torchscript(export_detector(model, tmp_path / "post.pt", format="torchscript", postprocess=True))
    with torch.no_grad():
        outputs = [o.numpy() for o in scripted(images)]
    _check_all(_split(*outputs, len(images)), want, model)


def test_pixel_input_exports_normalise_as_facenas_does(detector, batches, pixel_batches, tmp_path):
    """``pixels=True``: the graphs take uint8 (B, H, W, 3) RGB and give what the normalised ones do."""
    raw = OnnxDetectorSession(export_detector(detector, tmp_path / "raw.onnx", pixels=True), threads=1)
    post = OnnxDetectorSession(export_detector(detector, tmp_path / "post.onnx", postprocess=True, pixels=True))
    path = export_detector(detector, tmp_path / "post.pt", format="torchscript", postprocess=True, pixels=True)
    scripted, hparams = load_torchscript(path)
    assert raw.takes_pixels and raw.input_name == "pixels" and hparams["input"] == "pixels"
    for images, pixels in zip(batches, pixel_batches):
        with torch.no_grad():
            want_raw = detector(images)
            outputs = [o.numpy() for o in scripted(torch.from_numpy(pixels))]
        for got, want in zip(raw(pixels), want_raw):
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=RAW_ATOL)
        want = detector.detect(images)
        _check_all(raw.detect(pixels), want, detector)
        _check_all(post.detect(pixels), want, detector)
        _check_all(_split(*outputs, len(images)), want, detector)
    with pytest.raises(ValueError, match="takes pixels"):
        raw(batches[0].numpy())


def test_session_refuses_a_file_that_is_not_a_detector_export(tmp_path):
    with pytest.raises(FileNotFoundError):
        OnnxDetectorSession(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx"):
        OnnxDetectorSession(garbage)


# ---------------------------------------------------------------------------------------- recognition


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Four real aligned face chips at 64 px, normalised as the recognition data module does."""
    folder = data_path("dlib_johns")
    paths = sorted(folder.rglob("*.jpg"))[:4] or sorted(folder.rglob("*.png"))[:4]
    chips = [np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.BILINEAR)).copy() for p in paths]
    return (torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5


def test_faceid_embedding_network_in_onnx_runtime_matches_pytorch(faces, tmp_path):
    from facenas.models.recognition import FaceID

    torch.manual_seed(0)
    model = FaceID(backbone="dpn_search_small_301", embedding_dim=128, num_classes=10, flip_test=True).eval()
    path = export_embedder(model, tmp_path / "faceid.onnx", image_size=64)
    session = OnnxEmbedderSession(path, threads=1)
    assert session.hparams["embedding_dim"] == 128 and session.hparams["image_size"] == 64
    with torch.no_grad():
        want = model(faces)
    got = session(faces.numpy())
    assert got.shape == (4, 128)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=RAW_ATOL)
    np.testing.assert_allclose(session(faces[:1].numpy()), want[:1].numpy(), rtol=0, atol=RAW_ATOL)  # batch of 1
    np.testing.assert_allclose(session.embed(faces.numpy()), model.embed(faces).numpy(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------- the command


def test_export_command_writes_a_detector_onnx_runtime_runs(tmp_path):
    out = tmp_path / "det.onnx"
    ran = run_facenas(
        "export", "--config", str(REPO / "configs/detection/pretrained.yaml"), "--out", str(out), "--postprocess",
        cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert f"wrote {out}" in ran.stdout
    session = OnnxDetectorSession(out)
    assert session.postprocessed and session.hparams["backbone"] == "mobilenet_v2_0.5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx"]  # no run folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/detection/pretrained.yaml"], "give --out"),
        (["--config", "configs/detection/quickstart.yaml", "--out", "{tmp}/x.onnx"], "no trained weights"),
        (
            ["--config", "configs/detection/pretrained.yaml", "--out", "{tmp}/x.onnx", "--ckpt_path", "{tmp}/no.ckpt"],
            "checkpoint not found",
        ),
        (["--config", "configs/detection/pretrained.yaml", "--out", "{tmp}/x.onnx", "--opset", "13"], "--opset 13"),
        (
            ["--config", "configs/recognition/quickstart.yaml", "--out", "{tmp}/x.pt", "--format", "torchscript"],
            "FaceID model exports to onnx",
        ),
        (
            ["--config", "configs/recognition/quickstart.yaml", "--out", "{tmp}/x.onnx", "--pixels"],
            "--pixels is for detectors",
        ),
    ],
    ids=["no-out", "untrained", "missing-ckpt", "old-opset", "faceid-torchscript", "faceid-pixels"],
)
def test_export_command_refuses_bad_input_in_one_line(args, message, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = [a.replace("{tmp}", str(tmp_path)).replace("configs/", f"{REPO}/configs/") for a in args]
    ran = run_facenas("export", *args, cwd=work)
    assert ran.returncode == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facenas export: error:") and message in lines[0], ran.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and not any(work.iterdir())
