"""Dataset readers and writers: real WIDER FACE, dlib PASCAL faces, CelebA and identity folders
from ../shared/data, and small files written here for the formats that have no real data."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from facenas.datamodules import DataError, DataReport
from facenas.datamodules.detection import (
    attach_box_attributes,
    read_detection,
    read_dlib,
    read_fddb,
    read_retinaface,
    read_voc,
    read_wider,
    read_wider_predictions,
    write_wider_predictions,
)
from facenas.datamodules.recognition import (
    age_bin,
    read_celeba,
    read_identities,
    read_identity_csv,
    read_identity_folders,
    read_verification_bin,
    read_vggface2,
    write_verification_bin,
)

from .conftest import data_path


def write_image(path, size=(100, 80), color=(120, 90, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ---------------------------------------------------------------------------------- real data


def test_wider_val_subset(wider_val):
    gt, images = wider_val
    report = DataReport()
    samples = read_wider(gt, images, report=report)
    assert len(samples) == 394 and report.images_read == 394 and report.boxes_read == 5289
    # two 0x0 boxes in the official file are dropped, with their line
    assert report.counts() == {"empty_box": 2}
    assert all(i.line is not None and i.file == str(gt) for i in report.issues)
    assert sum(len(s) for s in samples) == 5287
    assert sum(int((~s.ignore).sum()) for s in samples) == 5082
    first = samples[0]
    assert first.width is not None and first.height is not None
    assert (first.boxes[:, 2] <= first.width).all() and (first.boxes[:, 3] <= first.height).all()


def test_wider_train_subset():
    samples = read_wider(
        data_path("widerface", "wider_face_split", "wider_face_train_bbx_gt.txt"),
        data_path("widerface", "WIDER_train", "images"),
    )
    assert len(samples) == 1239
    assert {s.name.split("/")[0] for s in samples} == {
        "1--Handshaking",
        "4--Dancing",
        "13--Interview",
        "19--Couple",
        "20--Family_Group",
    }


def test_wider_demographics_attach_by_face_index(wider_val):
    gt, _ = wider_val
    samples = read_wider(gt, verify="none")
    columns = attach_box_attributes(samples, data_path("widerface", "demographics_val.csv"))
    assert columns == ["perceived_gender", "perceived_age", "perceived_skin"]
    labelled = sum(v is not None for s in samples for v in s.attributes["perceived_gender"])
    assert labelled == 1647
    # the CSV repeats each face's box: it must equal the box at that face_index
    with open(data_path("widerface", "demographics_val.csv")) as f:
        row = next(csv.DictReader(f))
    sample = next(s for s in samples if s.name == row["file"])
    k = list(sample.source_index).index(int(row["face_index"]))
    x1, y1, w, h = (float(row[c]) for c in ("x1", "y1", "w", "h"))
    np.testing.assert_allclose(sample.boxes[k], [x1, y1, x1 + w, y1 + h])
    assert sample.attributes["perceived_gender"][k] == row["perceived_gender"].lower()


def test_dlib_pascal_faces():
    images = data_path("dlib_faces", "images")
    train = read_dlib(data_path("dlib_faces", "training_with_face_landmarks.xml"), images)
    test = read_dlib(data_path("dlib_faces", "testing.xml"), images)
    assert (len(train), sum(len(s) for s in train)) == (4, 18)
    assert (len(test), sum(len(s) for s in test)) == (5, 25)
    # 68-point landmarks reduce to 5 points inside their face box, eyes above the mouth
    marks, box = train[0].landmarks[0], train[0].boxes[0]
    assert np.isfinite(marks).all()
    assert (marks[:, 0] >= box[0] - 5).all() and (marks[:, 0] <= box[2] + 5).all()
    assert marks[0, 1] < marks[3, 1] and marks[0, 0] < marks[1, 0]
    assert test[0].landmarks is None


def test_celeba_identities():
    root = data_path("celeba_identities")
    samples = read_celeba(
        root / "identity_subset.txt",
        root / "img_celeba",
        attributes_file=root / "list_attr_celeba_first20000_rows_subset.txt",
    )
    assert len(samples) == 600 and len({s.identity for s in samples}) == 60
    with_gender = [s for s in samples if s.attributes["gender"] is not None]
    assert len(with_gender) == 180
    with open(root / "labels.csv") as f:
        truth = {r["image"]: r["gender_from_celeba_Male_attr"] for r in csv.DictReader(f)}
    assert all(truth[s.image.split("/")[-1]] == s.attributes["gender"] for s in with_gender)


def test_identity_csv_on_celeba_labels():
    root = data_path("celeba_identities")
    samples = read_identity_csv(root / "labels.csv", root / "img_celeba")
    assert len(samples) == 600
    per_identity = {}
    for s in samples:
        per_identity.setdefault(s.identity, set()).add(s.attributes["gender_from_celeba_Male_attr"])
    genders = [g.pop() for g in per_identity.values()]
    assert all(len(g) == 0 for g in per_identity.values())  # one gender per identity
    assert genders.count("female") == genders.count("male") == 30


def test_identity_folders_on_dlib_johns():
    samples = read_identity_folders(data_path("dlib_johns"))
    assert len(samples) == 55 and len({s.identity for s in samples}) == 5


# ------------------------------------------------------------------------- hygiene (WIDER)


def test_wider_hygiene_counts_and_skips_bad_input(tmp_path):
    write_image(tmp_path / "images/0--a/ok.jpg", size=(100, 80))
    write_image(tmp_path / "images/0--a/empty.jpg")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpeg, format="JPEG")
    (tmp_path / "images/0--a/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    gt = tmp_path / "gt.txt"
    gt.write_text(
        "0--a/ok.jpg\n5\n"
        "10 10 20 20 0 0 0 0 0 0\n"  # fine
        "nan 10 20 20 0 0 0 0 0 0\n"  # NaN -> dropped
        "30 30 0 10 0 0 0 0 0 0\n"  # zero width -> dropped
        "90 70 30 30 0 0 0 1 0 0\n"  # partly outside -> clipped, invalid -> ignore
        "500 500 10 10 0 0 0 0 0 0\n"  # wholly outside -> dropped
        "0--a/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"
        "0--a/truncated.jpg\n1\n1 1 5 5 0 0 0 0 0 0\n"
        "0--a/missing.jpg\n1\n1 1 5 5 0 0 0 0 0 0\n"
    )
    report = DataReport()
    samples = read_wider(gt, tmp_path / "images", verify="full", report=report)
    assert [s.name for s in samples] == ["0--a/ok.jpg", "0--a/empty.jpg"]
    ok = samples[0]
    np.testing.assert_allclose(ok.boxes, [[10, 10, 30, 30], [90, 70, 100, 80]])
    assert ok.ignore.tolist() == [False, True]
    assert ok.lines.tolist() == [3, 6] and ok.source_index.tolist() == [0, 3]
    assert report.counts() == {"nan_box": 1, "empty_box": 1, "outside_image": 1, "clipped": 1, "unreadable_image": 2}
    lines = {i.reason: i.line for i in report.issues}
    assert lines["nan_box"] == 4 and lines["empty_box"] == 5 and lines["outside_image"] == 7
    assert report.num_bad == 5
    assert report.bad_fraction == pytest.approx(5 / (4 + 7))
    assert "truncated.jpg" in "".join(i.detail for i in report.issues)


def test_wider_structural_errors_name_file_and_line(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("a.jpg\n1\n1 1 5 5 0 0 0 0 0 0\nb.jpg\nthree\n")
    with pytest.raises(DataError, match=r"gt.txt:5: expected the number of boxes of 'b.jpg', found 'three'"):
        read_wider(gt, verify="none")
    gt.write_text("a.jpg\n3\n1 1 5 5 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match=r"gt.txt:2: 'a.jpg' announces 3 boxes"):
        read_wider(gt, verify="none")
    with pytest.raises(DataError, match="not found"):
        read_wider(tmp_path / "nope.txt")


# --------------------------------------------------------------------- other detection formats


def test_retinaface_label_txt(tmp_path):
    write_image(tmp_path / "0--a/x.jpg", size=(200, 200))
    label = tmp_path / "label.txt"
    label.write_text(
        "# 0--a/x.jpg\n"
        "10 20 50 60 20.0 40.0 0.0 40.0 40.0 0.0 30.0 50.0 0.0 22.0 65.0 0.0 38.0 65.0 0.0 0.9\n"
        "100 100 30 30 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0\n"
        "150 150 10 10\n"
    )
    (sample,) = read_retinaface(label, tmp_path)
    np.testing.assert_allclose(sample.boxes, [[10, 20, 60, 80], [100, 100, 130, 130], [150, 150, 160, 160]])
    np.testing.assert_allclose(sample.landmarks[0], [[20, 40], [40, 40], [30, 50], [22, 65], [38, 65]])
    assert np.isnan(sample.landmarks[1]).all() and np.isnan(sample.landmarks[2]).all()


def test_fddb_ellipses_become_enclosing_boxes(tmp_path):
    write_image(tmp_path / "2002/08/img_1.jpg", size=(300, 300))
    fold = tmp_path / "FDDB-fold-01-ellipseList.txt"
    fold.write_text(f"2002/08/img_1\n2\n20 10 {math.pi / 2} 100 100 1\n20 10 0 200 200  1\n")
    (sample,) = read_fddb(tmp_path, tmp_path)  # a folder of folds
    # major axis vertical: 20 wide (2 * 10), 40 high; horizontal: 40 wide, 20 high
    np.testing.assert_allclose(sample.boxes, [[90, 80, 110, 120], [180, 190, 220, 210]], atol=1e-4)
    assert sample.name == "2002/08/img_1.jpg"


def test_voc_xml(tmp_path):
    write_image(tmp_path / "JPEGImages/a.jpg", size=(100, 100))
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>100</width><height>100</height></size>"
        "<object><name>face</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>40</xmax><ymax>50</ymax></bndbox></object>"
        "<object><name>face</name><difficult>1</difficult><bndbox><xmin>50</xmin><ymin>50</ymin><xmax>60</xmax><ymax>60</ymax></bndbox></object>"
        "<object><name>car</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (sample,) = read_voc(ann, tmp_path / "JPEGImages", classes=["face"])
    np.testing.assert_allclose(sample.boxes, [[10, 10, 40, 50], [50, 50, 60, 60]])
    assert sample.ignore.tolist() == [False, True]
    assert len(read_voc(ann, tmp_path / "JPEGImages")[0]) == 3
    (ann / "b.xml").write_text("<annotation><filename>b.jpg</filename>")
    with pytest.raises(DataError, match="b.xml:1: invalid XML"):
        read_voc(ann, tmp_path / "JPEGImages")


def test_coco_json(tmp_path):
    write_image(tmp_path / "a.jpg", size=(100, 100))
    write_image(tmp_path / "b.jpg", size=(50, 50))
    kps = [20, 30, 2, 40, 30, 2, 30, 40, 2, 22, 50, 2, 38, 50, 2]
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 20, 40, 40], "category_id": 1, "iscrowd": 0, "keypoints": kps},
            {"id": 2, "image_id": 1, "bbox": [60, 60, 10, 10], "category_id": 1, "iscrowd": 1},
            {"id": 3, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 2},
            {"id": 4, "image_id": 2, "bbox": [1, 2], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "hand"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    samples, report = read_detection("coco", tmp_path / "ann.json", tmp_path, categories=["face"])
    a, b = samples
    np.testing.assert_allclose(a.boxes, [[10, 20, 50, 60], [60, 60, 70, 70]])
    assert a.ignore.tolist() == [False, True]
    np.testing.assert_allclose(a.landmarks[0, 2], [30, 40])
    assert np.isnan(a.landmarks[1]).all() and len(b) == 0
    assert report.counts() == {"malformed_box": 1}


def test_wider_prediction_round_trip(tmp_path):
    boxes = np.array([[10.0, 20.0, 50.0, 80.0], [0.5, 1.5, 3.0, 4.0]])
    path = write_wider_predictions(tmp_path, "0--Parade/0_Parade_1.jpg", boxes, np.array([0.9, 0.25]))
    assert path == tmp_path / "0--Parade" / "0_Parade_1.txt"
    lines = path.read_text().splitlines()
    assert lines[:2] == ["0_Parade_1", "2"] and lines[2].split() == ["10.0", "20.0", "40.0", "60.0", "0.90000"]
    read = read_wider_predictions(tmp_path)
    np.testing.assert_allclose(read["0--Parade/0_Parade_1"][0], boxes, atol=0.05)
    np.testing.assert_allclose(read["0--Parade/0_Parade_1"][1], [0.9, 0.25])


# -------------------------------------------------------------------- identification formats


def test_vggface2_layout(tmp_path):
    for ident, n in (("n000001", 2), ("n000002", 3)):
        for k in range(n):
            write_image(tmp_path / "train" / ident / f"{k:04d}_01.jpg")
    meta = tmp_path / "identity_meta.csv"
    meta.write_text('Class_ID, Name, Sample_Num, Flag, Gender\nn000001, "A_B", 2, 1, m\nn000002, "C, D", 3, 1, f\n')
    samples = read_vggface2(tmp_path / "train", meta)
    assert [s.attributes["gender"] for s in samples] == ["male"] * 2 + ["female"] * 3
    meta.write_text("Class_ID, Name\nn000001, A\n")
    with pytest.raises(DataError, match="column 'Gender' missing"):
        read_vggface2(tmp_path / "train", meta)


def test_generic_csv_with_race_and_age_bins(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "faces.csv").write_text(
        "image,identity,race,age\na.jpg,p1,African,23\nb.jpg,p1,African,26\nc.jpg,p2,Asian,80\n"
    )
    samples, report = read_identities("csv", tmp_path / "faces.csv")
    assert [s.attributes["race"] for s in samples] == ["african", "african", "asian"]
    assert [s.attributes["age_bin"] for s in samples] == ["1-25", "26-50", "76-110"]
    assert age_bin(0) is None and age_bin(51) == "51-75"
    (tmp_path / "bad.csv").write_text("file,identity\na.jpg,p1\n")
    with pytest.raises(DataError, match="bad.csv:1: column 'image' missing"):
        read_identity_csv(tmp_path / "bad.csv")


def test_identity_csv_face_boxes(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "faces.csv").write_text(
        "image,identity,gender,x_1,y_1,width,height\na.jpg,p1,female,2,3,10,20\nb.jpg,p2,male,,,,\n"
    )
    a, b = read_identity_csv(tmp_path / "faces.csv")
    assert a.bbox == (2.0, 3.0, 12.0, 23.0) and b.bbox is None
    assert a.attributes == {"gender": "female"}  # the box columns are not groups
    (tmp_path / "part.csv").write_text("image,identity,x_1,y_1\na.jpg,p1,2,3\n")
    with pytest.raises(DataError, match="part.csv:1: face-box columns need all of .*missing width, height"):
        read_identity_csv(tmp_path / "part.csv")
    (tmp_path / "bad.csv").write_text("image,identity,x_1,y_1,width,height\na.jpg,p1,2,3,0,5\n")
    with pytest.raises(DataError, match="bad.csv:2: face box of width 0"):
        read_identity_csv(tmp_path / "bad.csv")


def test_identity_folders_skip_unreadable_images(tmp_path):
    write_image(tmp_path / "p1/a.jpg")
    (tmp_path / "p1/b.jpg").write_bytes(b"not a jpeg")
    write_image(tmp_path / "p2/c.png")
    report = DataReport()
    samples = read_identity_folders(tmp_path, report=report)
    assert [s.identity for s in samples] == ["p1", "p2"]
    assert report.counts() == {"unreadable_image": 1} and report.images_read == 3


def test_verification_bin_round_trip(tmp_path):
    images, issame = [], [True, False]
    for color in ((255, 0, 0), (250, 0, 0), (0, 0, 255), (0, 255, 0)):
        buf = io.BytesIO()
        Image.new("RGB", (112, 112), color).save(buf, format="JPEG")
        images.append(buf.getvalue())
    path = write_verification_bin(tmp_path / "lfw.bin", images, issame)
    pairs = read_verification_bin(path)
    assert len(pairs) == 2 and pairs.issame.tolist() == issame
    assert pairs.decode(2).size == (112, 112) and pairs.decode(2).getpixel((5, 5))[2] > 200
    (tmp_path / "bad.bin").write_bytes(b"junk")
    with pytest.raises(DataError, match="not an insightface verification pickle"):
        read_verification_bin(tmp_path / "bad.bin")


def test_celeba_crop_boxes_and_landmarks(tmp_path):
    write_image(tmp_path / "img/000001.jpg", size=(178, 218))
    write_image(tmp_path / "img/000002.jpg", size=(178, 218))
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 9\n")
    (tmp_path / "list_bbox_celeba.txt").write_text(
        "2\nimage_id x_1 y_1 width height\n000001.jpg 95 71 226 313\n000002.jpg 72 94 221 306\n"
    )
    (tmp_path / "list_landmarks_celeba.txt").write_text(
        "2\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        "000001.jpg 69 109 106 113 77 142 73 152 108 154\n000002.jpg 69 110 107 112 81 135 70 151 108 153\n"
    )
    (tmp_path / "attrs.txt").write_text("2\nMale Young\n000001.jpg -1 1\n000002.jpg 1 1\n")
    a, b = read_celeba(
        tmp_path / "identity_CelebA.txt",
        tmp_path / "img",
        attributes_file=tmp_path / "attrs.txt",
        bbox_file=tmp_path / "list_bbox_celeba.txt",
        landmarks_file=tmp_path / "list_landmarks_celeba.txt",
    )
    assert (a.identity, a.attributes["gender"], b.attributes["gender"]) == ("7", "female", "male")
    assert a.bbox == (95, 71, 321, 384)
    np.testing.assert_allclose(b.landmarks, [[69, 110], [107, 112], [81, 135], [70, 151], [108, 153]])
    (tmp_path / "list_bbox_celeba.txt").write_text("2\nimage_id x_1 y_1 width height\n000001.jpg 95 71\n")
    with pytest.raises(DataError, match="list_bbox_celeba.txt:3: expected 4 values"):
        read_celeba(tmp_path / "identity_CelebA.txt", tmp_path / "img", bbox_file=tmp_path / "list_bbox_celeba.txt")
