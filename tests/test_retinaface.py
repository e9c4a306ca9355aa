"""RetinaFace: anchors and coding, matching bands, hard negative mining, transforms, decoding,
bad input, and real training steps on WIDER FACE."""

from __future__ import annotations

import io
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from facenas.callbacks import DetectionAP
from facenas.datamodules import DetectionSample
from facenas.datamodules.detection import (
    DetectionDataset,
    FaceDetectionDataModule,
    collate_train,
)
from facenas.datamodules.detection.transforms import (
    CROP_SCALES,
    FLIP_ORDER,
    Faces,
    TrainTransform,
    crop_scales,
    horizontal_flip,
    random_square_crop,
)
from facenas.models import NonFiniteLossError
from facenas.models.detection import (
    MultiBoxLoss,
    RetinaFace,
    create_backbone,
    decode_boxes,
    decode_landmarks,
    encode_boxes,
    encode_landmarks,
    make_anchors,
    match_anchors,
    postprocess,
)
from facenas.models.detection.anchors import anchors_xyxy

from .conftest import data_path

# ----------------------------------------------------------------------------- anchors


def test_anchor_grid_matches_retinaface():
    anchors = make_anchors(640, 640)
    assert anchors.shape == (16_800, 4)
    np.testing.assert_allclose(anchors[:4], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16], [12, 4, 32, 32]])
    last = anchors[-1]
    np.testing.assert_allclose(last, [640 - 16, 640 - 16, 512, 512])
    assert make_anchors(480, 640).shape[0] == (60 * 80 + 30 * 40 + 15 * 20) * 2


def test_box_and_landmark_coding_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = make_anchors(128, 128)
    xy = torch.rand(len(anchors), 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 2 + torch.rand(len(anchors), 2, generator=g) * 60], 1)
    marks = torch.rand(len(anchors), 5, 2, generator=g) * 128
    torch.testing.assert_close(decode_boxes(encode_boxes(boxes, anchors), anchors), boxes, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(decode_landmarks(encode_landmarks(marks, anchors), anchors), marks, rtol=1e-5, atol=1e-4)
    # a box equal to its anchor encodes to zero
    square = torch.cat([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    assert encode_boxes(square, anchors).abs().max() < 1e-5


# ----------------------------------------------------------------------------- matching


def shifted(dx: float) -> list[float]:
    """A 10 x 10 anchor shifted right by dx from the face [0, 0, 10, 10]: IoU (10-dx)/(10+dx)."""
    return [5 + dx, 5, 10, 10]


def iou_shift(iou: float) -> float:
    return 10 * (1 - iou) / (1 + iou)


@pytest.mark.parametrize(
    "pos_iou, expected",
    [
        (0.4, [1, 1, 1, -1, 0]),  # neg < 0.25: 0.32 ignored
        (0.5, [1, 1, -1, -1, 0]),  # neg < 0.30: 0.45 and 0.32 ignored
        (0.6, [1, 1, -1, 0, 0]),  # neg < 0.35: 0.32 now background
    ],
)
def test_matching_bands(pos_iou, expected):
    ious = [1.0, 0.62, 0.45, 0.32, 0.15]
    anchors = torch.tensor([shifted(iou_shift(v)) for v in ious])
    face = torch.tensor([[0.0, 0, 10, 10]])
    m = match_anchors(anchors, face, torch.tensor([0]), 1, pos_iou=pos_iou)
    assert m.labels[0].tolist() == expected


def test_faces_claim_their_best_anchor_from_iou_0_2_and_ignore_regions_are_not_negatives():
    anchors = torch.tensor([[5.0, 5, 10, 10], [50, 50, 40, 40], [100, 100, 16, 16], [150, 150, 16, 16]])
    faces = torch.tensor(
        [
            [48.0, 48, 51, 51],  # 3 px: best IoU 0.006, too small for any anchor
            [92, 92, 108, 108],  # an ignore region exactly on anchor 2
            [146, 146, 157, 157],  # best IoU 0.47: below 0.5, claims anchor 3
        ]
    )
    m = match_anchors(anchors, faces, torch.tensor([0, 0, 0]), 1, torch.tensor([False, True, False]), pos_iou=0.5)
    assert m.labels[0].tolist() == [0, 0, -1, 1]
    assert m.gt_index[0, 3] == 2
    forced_all = match_anchors(anchors, faces, torch.tensor([0, 0, 0]), 1, pos_iou=0.5, force_iou=0.0)
    assert forced_all.labels[0, 1] == 1  # with force_iou 0 even the 3-px face claims an anchor


def test_faces_sharing_a_best_anchor_get_it_by_overlap_then_order():
    anchors = torch.tensor([[20.0, 20, 16, 16], [60, 60, 16, 16]])
    big = [12.0, 12, 28, 28]  # IoU 1 with anchor 0
    small = [14.0, 14, 24, 24]  # IoU 0.39 with anchor 0, its best
    for order in ([big, small], [small, big]):
        m = match_anchors(anchors, torch.tensor(order), torch.tensor([0, 0]), 1, force_iou=0.2)
        assert m.gt_index[0, 0].item() == order.index(big)
    same = torch.tensor([big, big])
    for _ in range(5):
        assert match_anchors(anchors, same, torch.tensor([0, 0]), 1).gt_index[0, 0].item() == 0


def reference_match(threshold, truths, priors):
    """Pytorch_Retinaface's ``match`` (utils/box_utils.py) transcribed: returns the label and
    matched-truth index of every prior, and the priors several faces claim (where its result
    depends on the face order)."""
    from torchvision.ops import box_iou

    overlaps = box_iou(truths, anchors_xyxy(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    valid = best_prior_overlap >= 0.2
    if not valid.any():
        return torch.zeros(len(priors), dtype=torch.long), None, set()
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, best_prior_idx[valid], 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    conf = torch.ones(len(priors), dtype=torch.long)
    conf[best_truth_overlap < threshold] = 0
    claimed = best_prior_idx.tolist()
    contested = {p for p in claimed if claimed.count(p) > 1} | set(best_prior_idx[~valid].tolist())
    return conf, best_truth_idx, contested


def test_matching_equals_the_reference_match():
    g = torch.Generator().manual_seed(7)
    anchors = make_anchors(160, 160)
    checked = 0
    for trial in range(20):
        n = int(torch.randint(1, 12, (), generator=g))
        side = torch.exp(torch.empty(n).uniform_(0.5, 4.5, generator=g))
        xy = torch.rand(n, 2, generator=g) * 150
        boxes = torch.cat([xy, xy + side[:, None] * torch.tensor([1.0, 1.25])], 1)
        for threshold in (0.35, 0.5):
            ours = match_anchors(
                anchors, boxes, torch.zeros(n, dtype=torch.long), 1, pos_iou=threshold, neg_iou=threshold
            )
            conf, truth, contested = reference_match(threshold, boxes, anchors)
            assert ours.labels[0].tolist() == conf.tolist(), trial
            positive = torch.nonzero(conf).reshape(-1).tolist()
            for p in positive:
                if p not in contested:
                    assert ours.gt_index[0, p] == truth[p]
                    checked += 1
    assert checked > 100


def test_matching_is_per_image_in_a_batch():
    anchors = torch.tensor([[5.0, 5, 10, 10], [25, 25, 10, 10]])
    faces = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    m = match_anchors(anchors, faces, torch.tensor([1, 1]), 3)
    assert m.labels.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert m.gt_index[1].tolist() == [0, 1]


# ----------------------------------------------------------------------------- loss


def test_hard_negative_mining_takes_ratio_times_positives_of_the_hardest():
    g = torch.Generator().manual_seed(1)
    anchors = make_anchors(64, 64)
    num = len(anchors)
    faces = torch.tensor([[8.0, 8, 40, 40], [0, 0, 20, 20], [30, 30, 60, 60]])
    targets = {
        "boxes": faces,
        "image": torch.tensor([0, 0, 1]),
        "ignore": torch.zeros(3, dtype=torch.bool),
        "landmarks": torch.full((3, 5, 2), float("nan")),
    }
    scores = torch.randn(2, num, 2, generator=g)
    loss = MultiBoxLoss(pos_iou=0.5, neg_pos_ratio=7)
    out = loss(scores, torch.zeros(2, num, 4), torch.zeros(2, num, 10), anchors, targets)
    m = match_anchors(anchors, faces, targets["image"], 2)
    pos = (m.labels == 1).sum(1)
    assert out["num_neg"] == (7 * pos).sum()
    # the mined negatives are the background anchors with the highest face logit margin
    hard = torch.zeros_like(scores)
    background = (m.labels[0] == 0).nonzero().reshape(-1)
    hard[0, background[:5], 1] = 20.0  # five confidently wrong anchors
    ratio1 = MultiBoxLoss(neg_pos_ratio=5 / int(pos[0]))
    with_hard = ratio1(hard, torch.zeros(2, num, 4), torch.zeros(2, num, 10), anchors, targets)
    assert with_hard["conf"] > 5 * 20.0 / pos.sum()  # all five (loss ~20 each) were mined


def test_landmark_loss_only_counts_faces_with_landmarks():
    anchors = make_anchors(64, 64)
    num = len(anchors)
    faces = torch.tensor([[8.0, 8, 40, 40], [30, 30, 60, 60]])
    marks = torch.full((2, 5, 2), float("nan"))
    targets = {
        "boxes": faces,
        "image": torch.tensor([0, 0]),
        "ignore": torch.zeros(2, dtype=torch.bool),
        "landmarks": marks,
    }
    loss = MultiBoxLoss()
    pred = torch.randn(1, num, 10)
    assert loss(torch.zeros(1, num, 2), torch.zeros(1, num, 4), pred, anchors, targets)["landmarks"] == 0
    marks[0] = torch.tensor([[16.0, 20], [32, 20], [24, 26], [18, 32], [30, 32]])
    assert loss(torch.zeros(1, num, 2), torch.zeros(1, num, 4), pred, anchors, targets)["landmarks"] > 0


# ----------------------------------------------------------------------------- transforms


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """Channel 0 holds the column, channel 1 the row: a crop reveals its offset."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def reference_crop(boxes, landmarks, x0, y0, side):
    """Pytorch_Retinaface's ``_crop`` for one accepted square, transcribed to numpy: faces
    whose centre lies strictly inside, boxes and landmarks clipped to the square."""
    boxes, landmarks = boxes.numpy().astype(np.float64), landmarks.numpy().astype(np.float64)
    roi = np.array([x0, y0, x0 + side, y0 + side], dtype=np.float64)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    mask = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
    b, m = boxes[mask].copy(), landmarks[mask].copy()
    b[:, :2] = np.maximum(b[:, :2], roi[:2]) - roi[:2]
    b[:, 2:] = np.minimum(b[:, 2:], roi[2:]) - roi[:2]
    m = np.minimum(np.maximum(m - roi[:2], 0), roi[2:] - roi[:2])
    return b, m


def test_crop_follows_the_reference_crop():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=g) * 50], 1)
    faces = Faces(boxes, torch.rand(40, 5, 2, generator=g) * 260 - 30, torch.zeros(40, dtype=torch.bool))
    image = coordinate_image(200, 250)
    sides = set()
    for _ in range(60):
        crop, kept, cropped = random_square_crop(image, faces, min_ratio=0.3)
        side = crop.shape[-1]
        sides.add(side)
        assert cropped and crop.shape[-2] == side and side in {int(s * 200) for s in CROP_SCALES}
        x0, y0 = int(crop[0, 0, 0]), int(crop[1, 0, 0])
        # accepted only with a face wholly inside
        whole = (boxes[:, :2] >= torch.tensor([x0, y0])).all(1) & (boxes[:, 2:] <= torch.tensor([x0, y0]) + side).all(1)
        assert whole.any()
        expected_boxes, expected_marks = reference_crop(boxes, faces.landmarks, x0, y0, side)
        np.testing.assert_allclose(kept.boxes.numpy(), expected_boxes, atol=1e-4)
        np.testing.assert_allclose(kept.landmarks.numpy(), expected_marks, atol=1e-4)
    assert len(sides) >= 4  # the scales are drawn, not one fixed side


def test_crop_scales_follow_min_crop_ratio():
    assert crop_scales(0.3) == (0.3, 0.45, 0.6, 0.8, 1.0)
    assert crop_scales(0.55) == (0.6, 0.8, 1.0)
    with pytest.raises(ValueError, match="min_crop_ratio"):
        crop_scales(1.2)


def test_crop_never_keeps_only_a_truncated_large_face():
    """One face covering most of the image: the reference rejects every crop that would cut it,
    so no crop keeps a truncated face alone; landmarks stay inside the crop."""
    torch.manual_seed(1)
    box = torch.tensor([[40.0, 30, 250, 230]])
    marks = torch.tensor([[[90.0, 100], [200, 100], [145, 150], [100, 190], [190, 190]]])
    faces = Faces(box, marks, torch.tensor([False]))
    image = coordinate_image(240, 300)
    for _ in range(200):
        crop, kept, cropped = random_square_crop(image, faces, min_ratio=0.3)
        side = crop.shape[-1]
        if not cropped:  # no square holds the face: the whole image is used (padded later)
            assert side == 300 and torch.equal(kept.boxes, box)
            continue
        assert len(kept.boxes) == 1
        x0, y0 = int(crop[0, 0, 0]), int(crop[1, 0, 0])
        torch.testing.assert_close(kept.boxes, box - torch.tensor([x0, y0, x0, y0]))  # whole, not truncated
        assert (kept.landmarks >= 0).all() and (kept.landmarks <= side).all()


def test_ignore_regions_alone_do_not_accept_a_crop():
    torch.manual_seed(2)
    boxes = torch.tensor([[10.0, 10, 30, 30], [150, 150, 230, 230]])
    faces = Faces(boxes, torch.full((2, 5, 2), float("nan")), torch.tensor([True, False]))
    image = coordinate_image(240, 240)
    for _ in range(50):
        crop, kept, cropped = random_square_crop(image, faces, min_ratio=0.3)
        if cropped:
            x0, y0, side = int(crop[0, 0, 0]), int(crop[1, 0, 0]), crop.shape[-1]
            assert x0 <= 150 and y0 <= 150 and x0 + side >= 230 and y0 + side >= 230
            assert torch.isnan(kept.landmarks).all()


def test_flip_mirrors_and_swaps_left_and_right_landmarks():
    marks = torch.tensor([[[30.0, 40], [60, 40], [45, 55], [35, 70], [55, 70]]])  # left eye at x=30
    faces = Faces(torch.tensor([[20.0, 25, 70, 85]]), marks, torch.tensor([False]))
    image = coordinate_image(100, 120)
    flipped, out = horizontal_flip(image, faces)
    assert int(flipped[0, 0, 0]) == 119
    torch.testing.assert_close(out.boxes, torch.tensor([[50.0, 25, 100, 85]]))
    # the new left eye is the mirrored old right eye, and it is still left of the new right eye
    assert out.landmarks[0, 0].tolist() == [120 - 60, 40] and out.landmarks[0, 1].tolist() == [120 - 30, 40]
    assert out.landmarks[0, 3].tolist() == [120 - 55, 70]
    assert out.landmarks[0, 0, 0] < out.landmarks[0, 1, 0]
    _, back = horizontal_flip(flipped, out)
    torch.testing.assert_close(back.landmarks, marks)
    assert FLIP_ORDER == [1, 0, 2, 4, 3]


def test_train_transform_outputs_square_normalised_input():
    torch.manual_seed(3)
    faces = Faces(torch.tensor([[50.0, 40, 110, 120]]), torch.full((1, 5, 2), float("nan")), torch.tensor([False]))
    image, out = TrainTransform(size=128, min_crop_ratio=0.55)(torch.full((3, 240, 320), 128, dtype=torch.uint8), faces)
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert len(out.boxes) == 1 and (out.boxes >= 0).all() and (out.boxes <= 128).all()


# ----------------------------------------------------------------------------- inference


def test_postprocess_thresholds_nms_and_keeps_top_k_per_image():
    anchors = torch.tensor([[20.0, 20, 20, 20], [21, 21, 20, 20], [80, 80, 20, 20], [50, 50, 10, 10]])
    logit = torch.tensor([[4.0, 3.0, 2.0, -8.0], [-8.0, -8.0, 1.0, 3.0]])  # face logits, background 0
    scores = torch.stack([torch.zeros_like(logit), logit], -1)
    out = postprocess(scores, torch.zeros(2, 4, 4), torch.zeros(2, 4, 10), anchors, nms_iou=0.4, keep_top_k=750)
    # image 0: anchors 0 and 1 overlap (IoU ~0.82) -> NMS keeps 0; anchor 3 is below 0.02
    assert len(out[0]["boxes"]) == 2 and out[0]["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())
    torch.testing.assert_close(out[0]["boxes"][1], torch.tensor([70.0, 70, 90, 90]))
    assert len(out[1]["boxes"]) == 1 + 1  # anchors 2 and 3 survive in image 1
    top1 = postprocess(scores, torch.zeros(2, 4, 4), torch.zeros(2, 4, 10), anchors, keep_top_k=1)
    assert [len(o["boxes"]) for o in top1] == [1, 1]
    assert top1[1]["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_network_outputs_one_row_per_anchor():
    model = RetinaFace()
    scores, boxes, marks = model(torch.zeros(2, 3, 128, 96))
    num = make_anchors(128, 96).shape[0]
    assert scores.shape == (2, num, 2) and boxes.shape == (2, num, 4) and marks.shape == (2, num, 10)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # MobileNetV2 x0.5 + FPN/SSH at 80 channels


def test_timm_backbone_by_name_and_unknown_names():
    backbone = create_backbone("resnet18")
    feats = backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [8, 4, 2] and backbone.out_channels == [128, 256, 512]
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net'"):
        create_backbone("no_such_net")


# ----------------------------------------------------------------------------- bad input and training


def test_unreadable_training_images_are_skipped(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (200, 150, 120)).save(good)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="JPEG")
    (tmp_path / "bad.jpg").write_bytes(buf.getvalue()[:100])
    samples = [
        DetectionSample(str(tmp_path / n), n, np.array([[10, 10, 40, 40]]), np.array([False]))
        for n in ("good.jpg", "bad.jpg")
    ]
    dataset = DetectionDataset(samples, TrainTransform(size=32))
    with pytest.warns(UserWarning, match="bad.jpg"):
        batch = collate_train([dataset[0], dataset[1]])
    assert batch["images"].shape == (1, 3, 32, 32) and batch["targets"]["image"].tolist() == [0]


class _DivergingRetinaFace(RetinaFace):
    """A RetinaFace whose third batch produces a NaN loss."""

    def forward(self, images):
        scores, boxes, marks = super().forward(images)
        if self.global_step == 2:
            scores = scores * float("nan")
        return scores, boxes, marks


def test_nan_loss_stops_with_the_step_named(tmp_path):
    data = FaceDetectionDataModule(
        synthetic_images=20,
        synthetic_size=(96, 96),
        synthetic_root=str(tmp_path / "syn"),
        split_file=str(tmp_path / "split.json"),
        image_size=64,
        batch_size=4,
        num_workers=0,
    )
    trainer = pl.Trainer(
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    with pytest.raises(NonFiniteLossError, match=r"global step 2"):
        trainer.fit(_DivergingRetinaFace(optimizer="adam"), data)


def test_synthetic_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    data = FaceDetectionDataModule(
        synthetic_images=40,
        synthetic_size=(128, 96),
        synthetic_root=str(tmp_path / "syn"),
        split_file=str(tmp_path / "split.json"),
        image_size=96,
        batch_size=8,
        num_workers=0,
        min_crop_ratio=0.8,
    )
    model = RetinaFace(optimizer="adam", lr=3e-3)
    data.setup()
    batch = collate_train([data.train_dataloader().dataset[i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        before = model.criterion(*model(batch["images"]), model.anchors(96, 96), batch["targets"])
    trainer = pl.Trainer(
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    model.train()
    trainer.fit(model, data)
    model.eval()
    with torch.no_grad():
        after = model.criterion(*model(batch["images"]), model.anchors(96, 96), batch["targets"])
    assert math.isfinite(after["loss"].item()) and after["loss"] < 0.8 * before["loss"]
    assert after["conf"] < 0.75 * before["conf"] and after["loc"] < before["loc"]


def test_real_wider_fit_steps_log_ap(tmp_path):
    root = data_path("widerface")
    data = FaceDetectionDataModule(
        format="wider",
        train_annotations=str(root / "wider_face_split/wider_face_train_bbx_gt.txt"),
        train_images=str(root / "WIDER_train/images"),
        val_annotations=str(root / "wider_face_split/wider_face_val_bbx_gt.txt"),
        val_images=str(root / "WIDER_val/images"),
        val_attributes=str(root / "demographics_val.csv"),
        image_size=128,
        batch_size=4,
        eval_batch_size=2,
        eval_short_side=160,
        num_workers=0,
    )
    model = RetinaFace(optimizer="adam")
    evaluation = DetectionAP(min_size=36, short_side=720, attributes={"perceived_gender": ["female", "male"]})
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[evaluation],
    )
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["train/loss"].item())
    assert 0.0 <= metrics["val/ap50"].item() <= 1.0
    assert "val/ap50_perceived_gender_female" in metrics and "val/ap50_disparity_perceived_gender" in metrics
    assert len(data.splits["train"]) == 1239 and len(data.splits["val"]) == 394


def test_predict_writes_one_file_per_test_image_and_eval_scores_that_split(tmp_path):
    import json

    from .conftest import REPO, run_facenas

    small = [
        "--data.init_args.synthetic_images",
        "30",
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.conf_threshold",
        "0.3",
        "--allow_random_weights",  # untrained: the plumbing is under test
        "true",
    ]
    config = str(REPO / "configs/detection/quickstart.yaml")
    out = run_facenas("predict", "--config", config, *small, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (split_file,) = (tmp_path / "data/splits").glob("*.json")
    test_images = sorted(k for k, v in json.loads(split_file.read_text())["assignments"].items() if v == "test")
    (predictions,) = (tmp_path / "runs/detection_quickstart").glob("version_*/predictions")
    written = sorted(p.relative_to(predictions).with_suffix("").as_posix() for p in predictions.rglob("*.txt"))
    assert written == sorted(str(Path(k).with_suffix("").as_posix()) for k in test_images) and len(written) == 9
    (gt,) = (tmp_path / "data/synthetic").glob("*/wider_face_bbx_gt.txt")
    scored = run_facenas(
        "eval",
        "detections",
        "--gt",
        str(gt),
        "--pred",
        str(predictions),
        "--split_file",
        str(split_file),
        "--json",
        cwd=tmp_path,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["num_images"] == 9 and result["images_without_predictions"] == 0 and result["split"] == "test"


def test_sparse_matching_equals_dense_matching():
    from facenas.models.detection.anchors import AnchorGrid

    g = torch.Generator().manual_seed(4)
    grid = AnchorGrid(320, 256)
    anchors = grid.anchors()
    counts = torch.tensor([0, 3, 25, 7])
    side = torch.exp(torch.empty(int(counts.sum())).uniform_(1.0, 5.5, generator=g))
    xy = torch.rand(len(side), 2, generator=g) * 250
    boxes = torch.cat([xy, xy + side[:, None] * torch.tensor([1.0, 1.3])], 1)
    image = torch.repeat_interleave(torch.arange(4), counts)
    ignore = torch.rand(len(side), generator=g) < 0.1
    for pos_iou in (0.4, 0.5, 0.6):
        dense = match_anchors(anchors, boxes, image, 4, ignore, pos_iou=pos_iou)
        sparse = match_anchors(anchors, boxes, image, 4, ignore, pos_iou=pos_iou, grid=grid)
        assert torch.equal(dense.labels, sparse.labels)
        positive = dense.labels == 1
        assert positive.any() and torch.equal(dense.gt_index[positive], sparse.gt_index[positive])
