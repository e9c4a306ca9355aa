"""Bad detection input never yields a wrong number: every case is either one line naming the
culprit (exit code 2) or counted, reported and skipped. Each test writes its own small files
and meets the problem where a user meets it, through the `facenas` command."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facenas.datamodules import DataReport, DetectionSample
from facenas.datamodules.detection import DetectionDataset, collate_eval, read_detection, read_wider
from facenas.datamodules.detection.datamodule import load_image
from facenas.datamodules.detection.transforms import EvalTransform

from .conftest import REPO, data_path, run_facenas

BOX = "0 0 0 0 0 0"  # WIDER's six attribute flags, all 0


def write_jpeg(path: Path, size=(64, 64), color=(200, 150, 120)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header reads but whose pixels stop short: only decoding finds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_bomb_png(path: Path, side: int = 40_000) -> Path:
    """A valid 1x1 PNG whose header then claims ``side`` x ``side`` pixels (a decompression bomb)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC over type + data
    path.write_bytes(bytes(data))
    return path


def write_prediction(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def eval_json(*args: str, cwd: Path) -> tuple[dict, str]:
    out = run_facenas("eval", "detections", *args, "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout), out.stderr


def one_line_error(out) -> str:
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# ----------------------------------------------------------------- prediction files (eval detections)


def test_bad_prediction_files_are_reported_and_left_out_of_the_score(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text(
        "".join(f"0--a/{n}.jpg\n2\n10 10 20 20 {BOX}\n50 50 20 20 {BOX}\n" for n in ("nohead", "count", "latin", "ok"))
    )
    good = "10 10 20 20 0.8\n50 50 20 20 0.7\n"
    pred = tmp_path / "pred"
    write_prediction(pred / "0--a/nohead.txt", good)  # no image name, no count: the first two lines were lost
    write_prediction(pred / "0--a/count.txt", "count\n3\n" + good)  # announces 3, holds 2
    write_prediction(pred / "0--a/latin.txt", b"lat\xe9n\n2\n" + good.encode())  # not UTF-8
    # a negative-size box and a NaN score rank first: scored, they would be false positives
    write_prediction(pred / "0--a/ok.txt", "ok\n4\n10 10 -20 20 0.99\n70 70 20 20 nan\n" + good)
    result, err = eval_json("--gt", str(gt), "--pred", str(pred), cwd=tmp_path)
    assert result["ap50"] == 1.0 and result["num_gt"] == 2 and result["num_det"] == 2
    assert result["num_images"] == 1 and result["skipped_images"] == 3
    assert "3 images left out of the score" in err
    assert (
        f"{pred / '0--a/nohead.txt'}:1" in err and "header lines (image name, number of detections) are missing" in err
    )
    assert "bad_prediction_file: 2" in err and "unreadable_prediction_file: 1" in err
    assert f"{pred / '0--a/latin.txt'}:1: not UTF-8" in err
    assert f"empty_prediction: 1 (first at {pred / '0--a/ok.txt'}:3" in err
    assert f"nan_prediction: 1 (first at {pred / '0--a/ok.txt'}:4" in err


def test_every_prediction_file_skipped_is_an_error(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"0--a/x.jpg\n1\n10 10 20 20 {BOX}\n")
    write_prediction(tmp_path / "pred/0--a/x.txt", "x\n5\n10 10 20 20 0.9\n")
    line = one_line_error(run_facenas("eval", "detections", "--gt", str(gt), "--pred", str(tmp_path / "pred")))
    assert "every image's prediction file was skipped" in line and "x.txt:2: the header announces 5" in line


@pytest.mark.parametrize("iou", ["5", "1.5", "0", "-0.5"])
def test_iou_outside_0_1_is_one_line(tmp_path, iou):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"0--a/x.jpg\n1\n10 10 20 20 {BOX}\n")
    write_prediction(tmp_path / "pred/0--a/x.txt", "x\n1\n10 10 20 20 0.9\n")
    line = one_line_error(
        run_facenas("eval", "detections", "--gt", str(gt), "--pred", str(tmp_path / "pred"), "--iou", iou)
    )
    assert "iou" in line


# ----------------------------------------------------------------------- ground truth (eval detections)


def test_duplicate_image_entries_are_merged_and_reported(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text(
        f"0--a/x.jpg\n2\n10 10 20 20 {BOX}\n50 50 20 20 {BOX}\n0--a/x.jpg\n2\n90 10 20 20 {BOX}\n10 60 20 20 {BOX}\n"
    )
    write_prediction(
        tmp_path / "pred/0--a/x.txt", "x\n4\n10 10 20 20 0.9\n50 50 20 20 0.8\n90 10 20 20 0.7\n10 60 20 20 0.6\n"
    )
    result, err = eval_json("--gt", str(gt), "--pred", str(tmp_path / "pred"), cwd=tmp_path)
    assert result["ap50"] == 1.0 and result["num_images"] == 1 and result["num_gt"] == 4
    assert f"duplicate_image: 1 (first at {gt}:5: 0--a/x.jpg: a second entry (first at {gt}:1)" in err


def test_nan_or_fractional_wider_attributes_become_reported_ignore_regions(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("0--a/x.jpg\n3\n10 10 20 20 nan 0 0 0 0 0\n50 50 20 20 0 0 0 0 0.5 0\n90 10 20 20 1 0 0 0 0 0\n")
    # the two faces with unreadable attributes neither reward nor penalise the detector
    write_prediction(tmp_path / "pred/0--a/x.txt", "x\n3\n10 10 20 20 0.9\n50 50 20 20 0.8\n90 10 20 20 0.7\n")
    result, err = eval_json("--gt", str(gt), "--pred", str(tmp_path / "pred"), cwd=tmp_path)
    assert result["ap50"] == 1.0 and result["num_gt"] == 1 and result["num_det"] == 1
    assert f"bad_attribute: 2 (first at {gt}:3: 0--a/x.jpg: blur=nan is not an integer" in err
    samples = read_wider(gt, verify="none")
    assert samples[0].ignore.tolist() == [True, True, False]
    assert samples[0].attributes["blur"] == [None, "0", "1"] and samples[0].attributes["occlusion"] == ["0", None, "0"]


def test_a_bom_at_the_start_of_annotations_is_read_transparently(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_bytes(b"\xef\xbb\xbf" + f"0--a/x.jpg\n1\n10 10 20 20 {BOX}\n".encode())
    write_prediction(tmp_path / "pred/0--a/x.txt", "x\n1\n10 10 20 20 0.9\n")
    result, err = eval_json("--gt", str(gt), "--pred", str(tmp_path / "pred"), cwd=tmp_path)
    assert result["ap50"] == 1.0 and result["images_without_predictions"] == 0, err


# ------------------------------------------------------------------- one line, exit 2 (data check, synth)


@pytest.mark.parametrize(
    "content, args, message",
    [
        (b"", [], "gt.txt: no image entry in the annotations (wider format): is the file empty?"),
        (
            f"0--a/a.jpg\n1\n1 1 5 5 {BOX}\n0--a/caf\xe9.jpg\n1\n1 1 5 5 {BOX}\n".encode("latin-1"),
            [],
            "gt.txt:4: not UTF-8 text (byte 0xe9 at column 9)",
        ),
        (  # a count too large is blamed on its own line, not on the next image's lines
            "".join(f"{n}.jpg\n{3 if n == 'a' else 1}\n1 1 5 5 {BOX}\n" for n in "abcd").encode(),
            [],
            "gt.txt:2: 'a.jpg' announces 3 boxes but the next image name, 'b.jpg' (line 4), comes after 1",
        ),
        (  # and so is a count too small
            f"a.jpg\n1\n1 1 5 5 {BOX}\n2 2 5 5 {BOX}\nb.jpg\n1\n1 1 5 5 {BOX}\n".encode(),
            [],
            "gt.txt:2: 'a.jpg' announces 1 boxes but more follow (line 4 is not an image name",
        ),
        (f"a.jpg\n1\n1 1 5 5 {BOX}\n".encode(), ["--verify", "bogus"], "verify"),
    ],
    ids=["empty", "latin-1", "count-too-large", "count-too-small", "verify-bogus"],
)
def test_data_check_errors_are_one_line(tmp_path, content, args, message):
    gt = tmp_path / "gt.txt"
    gt.write_bytes(content)
    line = one_line_error(
        run_facenas("data", "check", "--format", "wider", "--annotations", str(gt), "--verify", "none", *args)
    )
    assert message in line


def test_empty_ground_truth_is_an_error_for_eval_detections(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("")
    write_prediction(tmp_path / "pred/0--a/x.txt", "x\n1\n10 10 20 20 0.9\n")
    line = one_line_error(run_facenas("eval", "detections", "--gt", str(gt), "--pred", str(tmp_path / "pred")))
    assert "no image entry in the annotations" in line


@pytest.mark.parametrize("option", ["--width", "--height", "--images"])
def test_data_synth_refuses_non_positive_sizes(tmp_path, option):
    line = one_line_error(run_facenas("data", "synth", "--out", str(tmp_path / "s"), option, "0"))
    assert option.lstrip("-") in line
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------- images: counted and skipped (data check)


def test_data_check_counts_bombs_bad_attributes_and_reads_a_bom(tmp_path):
    images = tmp_path / "images"
    write_jpeg(images / "0--a/ok.jpg")
    write_bomb_png(images / "0--a/bomb.png")
    gt = tmp_path / "gt.txt"
    gt.write_bytes(
        b"\xef\xbb\xbf"
        + f"0--a/ok.jpg\n2\n10 10 20 20 nan 0 0 0 0 0\n30 30 20 20 {BOX}\n0--a/bomb.png\n1\n1 1 5 5 {BOX}\n".encode()
    )
    out = run_facenas(
        "data", "check", "--format", "wider", "--annotations", str(gt), "--images", str(images), "--json",
        "--max_bad_fraction", "1",
    )  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    found = json.loads(out.stdout)
    assert found["images"] == 1 and found["boxes"] == 2 and found["ignored_boxes"] == 1  # ok.jpg, BOM or not
    assert found["counts"] == {"bad_attribute": 1, "unreadable_image": 1}
    issues = {i["reason"]: i for i in found["issues"]}
    assert issues["bad_attribute"]["line"] == 3 and issues["bad_attribute"]["file"] == str(gt)
    assert "bomb.png" in issues["unreadable_image"]["detail"] and "too large" in issues["unreadable_image"]["detail"]


# --------------------------------------------------------------------------- readers: duplicates


def _wider(tmp_path: Path) -> Path:
    gt = tmp_path / "gt.txt"
    gt.write_text(
        f"a.jpg\n1\n10 10 20 20 {BOX}\nb.jpg\n1\n50 50 20 20 {BOX}\n"
        f"a.jpg\n1\n30 30 20 20 {BOX}\nb.jpg\n1\n50 50 20 20 {BOX}\n"
    )
    return gt


def _retinaface(tmp_path: Path) -> Path:
    label = tmp_path / "label.txt"
    label.write_text("# a.jpg\n10 10 20 20\n# b.jpg\n50 50 20 20\n# a.jpg\n30 30 20 20\n# b.jpg\n50 50 20 20\n")
    return label


def _fddb(tmp_path: Path) -> Path:
    folds = tmp_path / "folds"
    folds.mkdir()
    (folds / "FDDB-fold-01-ellipseList.txt").write_text("a\n1\n10 10 0 20 20 1\nb\n1\n10 10 0 60 60 1\n")
    (folds / "FDDB-fold-02-ellipseList.txt").write_text("a\n1\n10 10 0 40 40 1\nb\n1\n10 10 0 60 60 1\n")
    return folds


def _voc(tmp_path: Path) -> Path:
    folder = tmp_path / "Annotations"
    folder.mkdir()
    for k, (name, x) in enumerate([("a.jpg", 10), ("b.jpg", 50), ("a.jpg", 30), ("b.jpg", 50)]):
        (folder / f"{k}.xml").write_text(
            f"<annotation><filename>{name}</filename><object><name>face</name>"
            f"<bndbox><xmin>{x}</xmin><ymin>{x}</ymin><xmax>{x + 20}</xmax><ymax>{x + 20}</ymax></bndbox>"
            "</object></annotation>"
        )
    return folder


def _dlib(tmp_path: Path) -> Path:
    xml = tmp_path / "faces.xml"
    entries = "".join(
        f"<image file='{name}'><box top='{x}' left='{x}' width='20' height='20'/></image>"
        for name, x in [("a.jpg", 10), ("b.jpg", 50), ("a.jpg", 30), ("b.jpg", 50)]
    )
    xml.write_text(f"<dataset><images>{entries}</images></dataset>")
    return xml


def _coco(tmp_path: Path) -> Path:
    ann = tmp_path / "ann.json"
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}]
    images.append({"id": 2, "file_name": "b.jpg"})  # the same image listed twice
    annotations = [
        {"image_id": 1, "bbox": [10, 10, 20, 20], "category_id": 1},
        {"image_id": 2, "bbox": [50, 50, 20, 20], "category_id": 1},
        {"image_id": 3, "bbox": [30, 30, 20, 20], "category_id": 1},
    ]
    ann.write_text(json.dumps({"images": images, "annotations": annotations}))
    return ann


@pytest.mark.parametrize(
    "fmt, write",
    [("wider", _wider), ("retinaface", _retinaface), ("fddb", _fddb), ("voc", _voc), ("dlib", _dlib), ("coco", _coco)],
)
def test_every_reader_merges_split_entries_and_skips_repeated_ones(tmp_path, fmt, write):
    samples, report = read_detection(fmt, write(tmp_path), verify="none")
    names = [Path(s.name).stem for s in samples]
    assert names == ["a", "b"]
    a, b = samples
    assert len(a) == 2 and len(b) == 1  # a's two entries merged, b's repeat skipped
    assert a.source_index is None or a.source_index.tolist() in ([0, 1], [0, 2])
    duplicates = [i for i in report.issues if i.reason == "duplicate_image"]
    assert [i.bad for i in duplicates] == [False, True]
    assert "merged" in duplicates[0].detail and "repeats the entry" in duplicates[1].detail


def test_merged_wider_entries_keep_lines_and_continue_face_indices(tmp_path):
    report = DataReport()
    (a, _) = read_wider(_wider(tmp_path), verify="none", report=report)
    np.testing.assert_allclose(a.boxes, [[10, 10, 30, 30], [30, 30, 50, 50]])
    assert a.lines.tolist() == [3, 9] and a.source_index.tolist() == [0, 1]
    assert report.issues[0].line == 7 and report.issues[1].line == 10


def test_non_utf8_attribute_csv_names_file_and_line(tmp_path):
    from facenas.datamodules import DataError
    from facenas.datamodules.detection import attach_box_attributes

    (a, _) = read_wider(_wider(tmp_path), verify="none")
    csv = tmp_path / "demographics.csv"
    csv.write_bytes(b"\xef\xbb\xbffile,face_index,perceived_gender\na.jpg,0,female\na.jpg,1,m\xe4le\n")
    with pytest.raises(DataError, match=r"demographics.csv:3: not UTF-8"):
        attach_box_attributes([a], csv)
    csv.write_bytes(b"\xef\xbb\xbffile,face_index,perceived_gender\na.jpg,0,female\na.jpg,1,male\n")
    attach_box_attributes([a], csv)  # a BOM before the header is no column name
    assert a.attributes["perceived_gender"] == ["female", "male"]


# ------------------------------------------------------------------------------- images (decoding)


def test_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    grey = np.full((20, 30), 128 * 257, dtype=np.uint16)
    grey[:, :10] = 65535
    grey[:, 10:20] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # what Pillow makes of a 16-bit grey PNG
    pixels = load_image(str(path))
    assert pixels.shape == (3, 20, 30) and pixels.dtype == torch.uint8
    assert pixels[:, :, :10].eq(255).all() and pixels[:, :, 10:20].eq(0).all() and pixels[:, :, 20:].eq(128).all()
    item = DetectionDataset([DetectionSample(str(path), "deep.png", np.zeros((0, 4)), [])], EvalTransform(30, 30))[0]
    assert item is not None and item["meta"]["image_size"] == (20, 30)


def test_a_decompression_bomb_is_an_unreadable_image_not_a_crash(tmp_path):
    bomb = write_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(OSError, match="too large to decode"):
        load_image(str(bomb))
    dataset = DetectionDataset([DetectionSample(str(bomb), "bomb.png", np.zeros((0, 4)), [])], EvalTransform(64, 64))
    with pytest.warns(UserWarning, match="bomb.png"):
        item = dataset[0]
    assert item["unreadable"][0] == str(bomb) and "too large to decode" in item["unreadable"][1]
    batch = collate_eval([item])  # left out of the batch, listed for the data module to count
    assert batch["meta"] == [] and batch["unreadable"] == [item["unreadable"]]


# ------------------------------------------------------------------- training, validation, predict


def _wider_set(tmp_path: Path, everything: bool) -> dict[str, Path]:
    """A tiny WIDER set with truncated JPEGs in training and in validation (a batch of one of
    them has no image left) and, with ``everything``, the other bad input training must
    survive: a BOM, a NaN attribute (in a second entry of an image) and a decompression bomb."""
    train, val = tmp_path / "WIDER_train/images", tmp_path / "WIDER_val/images"
    for k in range(4):
        write_jpeg(train / f"0--a/{k}.jpg", size=(96, 96), color=(40 * k, 120, 200 - 40 * k))
    write_truncated_jpeg(train / "0--a/truncated.jpg")
    write_bomb_png(train / "0--a/bomb.png")
    write_jpeg(val / "0--a/v.jpg", size=(96, 96))
    write_truncated_jpeg(val / "0--a/truncated.jpg")
    face = f"20 20 40 40 {BOX}\n"
    train_gt = tmp_path / "train_gt.txt"
    text = "".join(f"0--a/{k}.jpg\n1\n{face}" for k in range(4)) + f"0--a/truncated.jpg\n1\n{face}"
    if everything:
        text += f"0--a/bomb.png\n1\n{face}0--a/0.jpg\n1\n50 50 30 30 nan 0 0 0 0 0\n"
    train_gt.write_bytes((b"\xef\xbb\xbf" if everything else b"") + text.encode())
    val_gt = tmp_path / "val_gt.txt"
    val_gt.write_text(f"0--a/v.jpg\n1\n{face}0--a/truncated.jpg\n1\n{face}")
    return {"train": train_gt, "train_images": train, "val": val_gt, "val_images": val}


@pytest.mark.parametrize("everything", [False, True], ids=["truncated", "all-bad-input"])
def test_fit_survives_bad_images_and_attributes_with_batches_of_one(tmp_path, everything):
    files = _wider_set(tmp_path, everything)
    out = run_facenas(
        "fit",
        "--config", str(REPO / "configs/detection/quickstart.yaml"),
        "--data.init_args.format", "wider",
        "--data.init_args.train_annotations", str(files["train"]),
        "--data.init_args.train_images", str(files["train_images"]),
        "--data.init_args.val_annotations", str(files["val"]),
        "--data.init_args.val_images", str(files["val_images"]),
        "--data.init_args.image_size", "64",
        "--data.init_args.eval_short_side", "64",
        "--data.init_args.batch_size", "1",
        "--data.init_args.eval_batch_size", "1",
        "--data.init_args.num_workers", "0",
        "--data.init_args.max_bad_fraction", "0.5",
        "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Traceback" not in out.stderr
    both = out.stdout + out.stderr
    assert "skipping unreadable image" in both and "truncated.jpg" in both
    if everything:
        assert "bad_attribute: 1" in both and "unreadable_image: 1" in both and "too large to decode" in both
        assert "duplicate_image: 1" in both
    (run,) = (tmp_path / "runs/detection_quickstart").glob("version_*")
    metrics = (run / "metrics.csv").read_text()
    assert "val/ap50" in metrics and "test/ap50" in metrics  # validation and test ran on the readable image


def test_predict_survives_a_batch_of_unreadable_images(tmp_path):
    folder = tmp_path / "photos"
    write_jpeg(folder / "a.jpg", size=(96, 96))
    write_truncated_jpeg(folder / "b.jpg")
    out = run_facenas(
        "predict",
        "--config", str(REPO / "configs/detection/quickstart.yaml"),
        "--data.init_args.images", str(folder),
        "--allow_random_weights", "true",
        "--data.init_args.eval_batch_size", "1",
        "--data.init_args.num_workers", "0",
        "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert "skipping unreadable image" in out.stderr and "b.jpg" in out.stderr
    (predictions,) = (tmp_path / "runs/detection_quickstart").glob("version_*/predictions")
    assert sorted(p.name for p in predictions.rglob("*.txt")) == ["a.txt"]


def test_an_empty_validation_split_stops_fit_with_one_line(tmp_path):
    out = run_facenas(
        "fit",
        "--config", str(REPO / "configs/detection/quickstart.yaml"),
        "--data.init_args.synthetic_images", "8",
        "--data.init_args.synthetic_size", "[96, 96]",
        "--data.init_args.split_ratios", "[1, 0, 0]",
        "--data.init_args.num_workers", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("facenas fit: error: the val split is empty") and "`facenas fit` needs it" in line, line


def test_real_wider_ground_truth_has_no_duplicate_or_bad_attribute(wider_val):
    gt, _ = wider_val
    report = DataReport()
    read_wider(gt, verify="none", report=report)
    assert "duplicate_image" not in report.counts() and "bad_attribute" not in report.counts()
    train = DataReport()
    read_wider(data_path("widerface", "wider_face_split", "wider_face_train_bbx_gt.txt"), verify="none", report=train)
    assert "duplicate_image" not in train.counts() and "bad_attribute" not in train.counts()


@pytest.mark.parametrize(
    "fmt, write",
    [("wider", _wider), ("retinaface", _retinaface), ("fddb", _fddb), ("voc", _voc), ("dlib", _dlib), ("coco", _coco)],
)
def test_every_reader_reads_a_leading_bom(tmp_path, fmt, write):
    source = write(tmp_path)
    for file in sorted(source.iterdir()) if source.is_dir() else [source]:
        file.write_bytes(b"\xef\xbb\xbf" + file.read_bytes())
    samples, _ = read_detection(fmt, source, verify="none")
    assert [Path(s.name).stem for s in samples] == ["a", "b"]


def test_the_metric_core_refuses_an_iou_outside_0_1():
    from facenas.callbacks.detection_ap import BadThreshold, evaluate_detections
    from facenas.core.errors import UserError

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    for iou in (0.0, 1.5, float("nan")):
        with pytest.raises(BadThreshold, match=r"iou must be in \(0, 1\]") as caught:
            evaluate_detections(
                [(boxes, torch.ones(1))], [(boxes, torch.zeros(1, dtype=torch.bool))], iou_threshold=iou
            )
        assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    assert (
        evaluate_detections(
            [(boxes, torch.ones(1))], [(boxes, torch.zeros(1, dtype=torch.bool))], iou_threshold=1.0
        ).ap50
        == 1.0
    )


def test_the_metric_core_never_scores_detections_that_are_not_boxes():
    from facenas.callbacks.detection_ap import evaluate_detections

    truth = [(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(1, dtype=torch.bool))]
    good = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    broken = torch.tensor([[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 1.0, 9.0], [float("nan"), 0, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.99, 0.98, 0.97, float("nan")])
    result = evaluate_detections([(torch.cat([broken, good]), torch.cat([scores, torch.tensor([0.5])]))], truth)
    assert result.ap50 == 1.0 and result.num_det == 1  # scored, the four would be false positives ranked first
