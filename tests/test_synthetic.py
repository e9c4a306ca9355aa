"""The seeded synthetic detection and identity generators, read back by the real-format readers."""

from __future__ import annotations

import numpy as np
import pytest

from facenas.datamodules.detection import (
    DOMAINS,
    generate_detection_dataset,
    read_retinaface,
    read_wider,
    synthesize_detection_image,
)
from facenas.datamodules.recognition import generate_identity_dataset, read_identity_csv
from facenas.datamodules.recognition.synthetic import GroupSpec


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_draws_faces_with_landmarks_inside_their_boxes(domain):
    image, boxes, marks = synthesize_detection_image(3, domain=domain, size=(320, 240), seed=1)
    assert image.size == (320, 240) and len(boxes) >= 1
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 320).all() and (boxes[:, [1, 3]] <= 240).all()
    inside = (marks >= boxes[:, None, :2] - 1) & (marks <= boxes[:, None, 2:] + 1)
    assert inside.all(axis=2).mean() > 0.95
    # left eye left of right eye, eyes above mouth corners
    assert (marks[:, 0, 0] < marks[:, 1, 0]).all() and (marks[:, 0, 1] < marks[:, 3, 1]).all()


def test_generation_is_seeded():
    a = synthesize_detection_image(0, domain="plain", size=(160, 120), seed=5)
    b = synthesize_detection_image(0, domain="plain", size=(160, 120), seed=5)
    c = synthesize_detection_image(0, domain="plain", size=(160, 120), seed=6)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(a[1], b[1])
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_domains_differ_in_face_count_size_and_brightness():
    def stats(domain):
        faces, sizes, light = [], [], []
        for i in range(12):
            image, boxes, _ = synthesize_detection_image(i, domain=domain, size=(320, 240))
            faces.append(len(boxes))
            sizes.extend(np.sqrt((boxes[:, 2:] - boxes[:, :2]).prod(1)))
            light.append(np.asarray(image).mean())
        return np.mean(faces), np.median(sizes), np.mean(light)

    plain, crowd, dark = stats("plain"), stats("crowd"), stats("lowlight")
    assert crowd[0] > 3 * plain[0] and crowd[1] < plain[1] / 2
    assert dark[2] < 0.6 * plain[2]


def test_cached_detection_set_reads_back_in_both_formats(tmp_path):
    root = generate_detection_dataset(
        tmp_path / "syn", 6, domains=["plain", "masked", "fisheye"], size=(160, 120), seed=2
    )
    wider = read_wider(root / "wider_face_bbx_gt.txt", root / "images", verify="full")
    retina = read_retinaface(root / "label.txt", root / "images")
    assert len(wider) == len(retina) == 6
    for i, (w, r) in enumerate(zip(wider, retina)):
        _, boxes, marks = synthesize_detection_image(
            i, domain=["plain", "masked", "fisheye"][i % 3], size=(160, 120), seed=2
        )
        np.testing.assert_allclose(w.boxes, boxes, atol=0.011)
        np.testing.assert_allclose(r.landmarks, marks, atol=0.011)
    mtime = (root / "label.txt").stat().st_mtime_ns
    generate_detection_dataset(tmp_path / "syn", 6, domains=["plain", "masked", "fisheye"], size=(160, 120), seed=2)
    assert (root / "label.txt").stat().st_mtime_ns == mtime  # reused, not redrawn


def test_identity_set_groups_differ_in_count_and_spread(tmp_path):
    groups = (GroupSpec("female", 0.4, 0.3), GroupSpec("male", 0.6, 1.0))
    labels = generate_identity_dataset(
        tmp_path / "ids", num_identities=10, images_per_identity=3, groups=groups, size=64, seed=1
    )
    samples = read_identity_csv(labels, verify="full")
    assert len(samples) == 30
    per_group = {}
    for s in samples:
        per_group.setdefault(s.attributes["gender"], set()).add(s.identity)
    assert {g: len(v) for g, v in per_group.items()} == {"female": 4, "male": 6}
    # images of one identity resemble each other more than images of different identities
    from PIL import Image

    def pixels(s):
        return np.asarray(Image.open(s.image).convert("L").resize((16, 16)), dtype=float).ravel()

    by_id = {}
    for s in samples:
        by_id.setdefault(s.identity, []).append(pixels(s))
    same = np.mean([np.corrcoef(v[0], v[1])[0, 1] for v in by_id.values()])
    ids = list(by_id)
    other = np.mean([np.corrcoef(by_id[a][0], by_id[b][0])[0, 1] for a, b in zip(ids, ids[1:])])
    assert same > other
