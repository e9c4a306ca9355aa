"""Face boxes for the CelebA identity subset from the shipped WIDER-trained detector.

The subset (``../shared/data/celeba_identities``) has CelebA's unaligned in-the-wild images and
no box file (CelebA's ``list_bbox_celeba.txt``). Resized whole, its faces are a small part of a
64-px image, and a FaceID trained on them stays at chance. This script runs the shipped
RetinaFace (``wider_subset_320``) on every image, keeps its largest face scoring at least
``--min_score``, and writes
``labels.csv`` with the box columns ``x_1, y_1, width, height`` (CelebA's names, read by the
``csv`` identity format, which then crops each image to its box):

    python benchmarks/celeba_face_boxes.py --out runs/compare/celeba_faces.csv

An image without a detection above ``--min_score`` keeps empty box cells (the whole image); the
count is printed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facenas.datamodules.detection.transforms import normalize, pad_to_square, resize  # noqa: E402
from facenas.models.detection import RetinaFace  # noqa: E402

CELEBA = REPO.parent / "shared" / "data" / "celeba_identities"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CELEBA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=640, help="the padded square side the detector sees")
    parser.add_argument("--min_score", type=float, default=0.5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of labels.csv")
    args = parser.parse_args()

    detector = RetinaFace(weights="wider_subset_320").eval()
    with open(args.data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: args.limit]
    missed = 0
    scores = []
    for first in range(0, len(rows), args.batch_size):  # one detector pass per batch of images
        batch = rows[first : first + args.batch_size]
        images, sides = [], []
        for row in batch:
            image = Image.open(args.data / "img_celeba" / row["image"]).convert("RGB")
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
            sides.append(max(pixels.shape[1:]))
            images.append(normalize(resize(pad_to_square(pixels), (args.size, args.size))))
        for row, side, faces in zip(batch, sides, detector.detect(torch.stack(images))):
            confident = faces["scores"] >= args.min_score
            if not bool(confident.any()):
                missed += 1
                row.update({"x_1": "", "y_1": "", "width": "", "height": ""})
                continue
            # the celebrity is the photo's subject: the largest confident face (a crowd behind a
            # celebrity is often detected with scores as high)
            boxes = faces["boxes"]
            area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).where(confident, torch.tensor(-1.0))
            best = int(area.argmax())
            scores.append(float(faces["scores"][best]))
            x1, y1, x2, y2 = (boxes[best] * side / args.size).tolist()
            x1, y1 = max(x1, 0.0), max(y1, 0.0)
            row.update({"x_1": f"{x1:.1f}", "y_1": f"{y1:.1f}", "width": f"{x2 - x1:.1f}", "height": f"{y2 - y1:.1f}"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"{len(rows)} images: {len(rows) - missed} with a face (median score {np.median(scores):.3f}), "
        f"{missed} without one above {args.min_score} (whole image kept); written to {args.out}"
    )


if __name__ == "__main__":
    main()
