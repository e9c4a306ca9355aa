"""`facenas predict` never guesses: what it refuses (one line, exit 2, no run folder), what it
writes for a folder (names that keep their extension, or a clash refused up front) and for a
video (one JSON line per frame and an annotated copy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import data_path, run_facenas

CONFIG = Path(__file__).resolve().parents[1] / "configs"
PRETRAINED = ("--config", str(CONFIG / "detection/pretrained.yaml"))
QUIET = ("--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false")


def write_image(path: Path, size: tuple[int, int] = (120, 90), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def refused(out, *expected: str) -> str:
    """The one line of a refusal, checked: exit 2, one line on stderr holding ``expected``."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "case",
    ["no_weights", "no_images", "missing_file", "missing_folder", "empty_folder", "not_an_image", "name_clash"],
)
def test_predict_refuses_before_anything_is_written(case, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    if case == "no_weights":  # a training config, no checkpoint: random weights
        args = ["--config", str(CONFIG / "detection/quickstart.yaml"), "--data.init_args.images", str(photos)]
        expected = ["the model has no trained weights", "--ckpt_path", "--allow_random_weights"]
    elif case == "no_images":  # the shipped detector's config alone would predict a synthetic set
        args = [*PRETRAINED]
        expected = ["data.init_args.images is not set", "synthetic"]
    elif case == "missing_file":
        given = str(photos / "b.jpg")
        args = [*PRETRAINED, "--data.init_args.images", given]
        expected = [f"data.init_args.images: {given!r}: no such file or folder"]
    elif case == "missing_folder":
        args = [*PRETRAINED, "--data.init_args.images", "elsewhere/photos"]  # relative, as the user typed it
        expected = ["data.init_args.images: 'elsewhere/photos': no such file or folder"]
    elif case == "empty_folder":
        (tmp_path / "empty/sub").mkdir(parents=True)
        (tmp_path / "empty/sub/notes.txt").write_text("no image here")
        args = [*PRETRAINED, "--data.init_args.images", "empty"]
        expected = ["data.init_args.images: 'empty': no image files (.jpg, .jpeg, .png, .bmp, .webp) in the folder"]
    elif case == "not_an_image":
        (tmp_path / "notes.txt").write_text("not an image")
        args = [*PRETRAINED, "--data.init_args.images", "notes.txt"]
        expected = ["notes.txt: not an image or video by its extension"]
    else:
        write_image(photos / "a.png", seed=1)
        args = [*PRETRAINED, "--data.init_args.images", str(photos)]
        expected = ["a.jpg and a.png would both be written as a.txt", "rename one"]
    out = run_facenas("predict", *args, *QUIET, cwd=tmp_path)
    refused(out, *expected)
    assert not (tmp_path / "runs").exists()
    assert "Traceback" not in out.stderr


def test_the_command_refuses_a_photo_that_is_not_there_in_one_line(tmp_path):
    """The issue's case as a user meets it, through the entry point in a fresh process: a single
    photo path that does not exist is named as typed; exit 2; no run folder left behind."""
    out = run_facenas("predict", *PRETRAINED, "--data.init_args.images", "photo.jpg", cwd=tmp_path, process=True)
    assert out.stderr == "facenas predict: error: data.init_args.images: 'photo.jpg': no such file or folder\n"
    assert out.returncode == 2 and out.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_allow_random_weights_predicts_with_a_training_config(tmp_path):
    write_image(tmp_path / "photos/a.jpg")
    out = run_facenas(
        "predict", "--config", str(CONFIG / "detection/quickstart.yaml"), "--data.init_args.images", "photos",
        "--allow_random_weights", "true", *QUIET, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs/detection_quickstart/version_0/predictions/a.txt").is_file()


def test_a_folder_keeps_each_name_and_extension(tmp_path):
    """Nested folders and several extensions: a WIDER file per image (named without the
    extension, as the format wants), a drawn copy under the image's own name and format, and a
    JSON line per image; x.jpg in two folders is no clash."""
    photos = tmp_path / "photos"
    for name in ("x.jpg", "y.png", "trip/x.jpg", "trip/z.webp"):
        write_image(photos / name, seed=len(name))
    out = run_facenas(
        "predict", *PRETRAINED, "--data.init_args.images", str(photos), *QUIET, cwd=tmp_path
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    predictions = tmp_path / "runs/pretrained/version_0/predictions"
    files = sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob("*") if p.is_file())
    assert files == [
        "detections.jsonl", "trip/x.jpg", "trip/x.txt", "trip/z.txt", "trip/z.webp", "x.jpg", "x.txt", "y.png", "y.txt",
    ]  # fmt: skip
    for name, kind in (("x.jpg", "JPEG"), ("y.png", "PNG"), ("trip/z.webp", "WEBP")):
        with Image.open(predictions / name) as drawn:
            assert drawn.format == kind and drawn.size == (120, 90)
    lines = [json.loads(line) for line in (predictions / "detections.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == ["trip/x.jpg", "trip/z.webp", "x.jpg", "y.png"]
    assert all((line["width"], line["height"]) == (120, 90) for line in lines)
    assert "predictions for 4 images written to" in out.stdout


def test_drawn_copies_show_boxes_and_landmarks(tmp_path):
    """The drawing of a copy: the box outline in green and the 5 landmarks as coloured dots."""
    from facenas.callbacks.writers import _drawn

    image = np.zeros((3, 100, 120), np.uint8)
    boxes = np.array([[20.0, 20.0, 80.0, 90.0]], np.float32)
    marks = np.array([[[40, 45], [60, 45], [50, 60], [42, 75], [58, 75]]], np.float32)
    import torch

    drawn = _drawn(torch.from_numpy(image), torch.from_numpy(boxes), torch.from_numpy(marks))
    assert drawn.shape == (100, 120, 3)
    assert tuple(drawn[20, 50]) == (0, 255, 0)  # the top edge of the box
    assert tuple(drawn[45, 40]) == (0, 0, 255) and tuple(drawn[60, 50]) == (255, 255, 0)
    assert tuple(drawn[75, 58]) == (255, 0, 0)
    assert tuple(drawn[5, 5]) == (0, 0, 0)


def test_a_video_gives_one_json_line_per_frame_and_an_annotated_copy(tmp_path):
    """A 4-frame clip the test writes from a real photo: detections.jsonl has one line per frame
    (frame index, time) holding what FaceDetector finds in the decoded frame; the annotated
    copy has the clip's name, frame count, size and rate; no WIDER file per frame."""
    from facenas import FaceDetector
    from facenas.datamodules.video import VideoWriter, read_frames, video_info

    photo = data_path("widerface", "WIDER_val", "images", "0--Parade", "0_Parade_Parade_0_616.jpg")
    with Image.open(photo) as image:
        pixels = np.asarray(image.convert("RGB").resize((480, 384)))
    clip = tmp_path / "clip.mp4"
    writer = VideoWriter(clip, 5)
    for shift in range(4):
        writer.write(np.roll(pixels, 12 * shift, axis=1))
    writer.close()

    out = run_facenas("predict", *PRETRAINED, "--data.init_args.images", "clip.mp4", *QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "predictions for 4 frames of 1 video written to" in out.stdout
    assert "Couldn't infer the batch indices" not in out.stderr and "Traceback" not in out.stderr
    predictions = tmp_path / "runs/pretrained/version_0/predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["clip.mp4", "detections.jsonl"]
    lines = [json.loads(line) for line in (predictions / "detections.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3]
    assert [line["time"] for line in lines] == pytest.approx([0, 0.2, 0.4, 0.6])
    assert all(line["image"] == "clip.mp4" and (line["width"], line["height"]) == (480, 384) for line in lines)
    detector = FaceDetector.from_pretrained(device="cpu")
    frames = [frame for _, _, frame in read_frames(clip)]
    assert [line["faces"] for line in lines] == [detector.detect(frame).to_list() for frame in frames]
    assert sum(len(line["faces"]) for line in lines) >= 4
    annotated = video_info(predictions / "clip.mp4")
    assert (annotated.width, annotated.height, annotated.frames, annotated.rate) == (480, 384, 4, 5)


def test_a_file_that_is_not_a_video_is_refused(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    out = run_facenas("predict", *PRETRAINED, "--data.init_args.images", "broken.mp4", *QUIET, cwd=tmp_path)
    refused(out, "data.init_args.images: 'broken.mp4'", "not a readable video")
    assert not (tmp_path / "runs").exists()
