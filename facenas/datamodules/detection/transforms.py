"""Detection transforms as in RetinaFace/HyperFD training, on uint8 CHW tensors.

Training: Pytorch_Retinaface's random square crop (see :func:`random_square_crop`);
photometric distortion;
horizontal flip that also swaps left/right landmarks; resize to a square network input.
Evaluation: resize so that the shorter side has a given length (the longer side capped).
Randomness comes from torch's generator, which Lightning seeds per dataloader worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
# landmark order: left eye, right eye, nose, left mouth corner, right mouth corner
FLIP_ORDER = [1, 0, 2, 4, 3]


@dataclass
class Faces:
    """The faces of one image: boxes (G, 4) xyxy, landmarks (G, 5, 2) (NaN: none), ignore (G,)."""

    boxes: Tensor
    landmarks: Tensor
    ignore: Tensor

    def select(self, keep: Tensor) -> Faces:
        return Faces(self.boxes[keep], self.landmarks[keep], self.ignore[keep])


# Pytorch_Retinaface's crop scales (``PRE_SCALES`` in its data_augment.py): the crop side is one
# of these fractions of the shorter image side
CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)


def crop_scales(min_ratio: float) -> tuple[float, ...]:
    """The reference scales at or above ``min_ratio`` (HyperFD's min crop ratio: 0.3 -> all
    five, 0.55 -> 0.6, 0.8, 1.0)."""
    scales = tuple(s for s in CROP_SCALES if s >= min_ratio - 1e-9)
    if not scales:
        raise ValueError(f"min_crop_ratio {min_ratio} is above the largest crop scale 1.0")
    return scales


def random_square_crop(
    image: Tensor, faces: Faces, min_ratio: float = 0.3, tries: int = 250
) -> tuple[Tensor, Faces, bool]:
    """RetinaFace's training crop, as Pytorch_Retinaface's ``_crop`` does it.

    A square of side ``scale x shorter side`` (``scale`` drawn from :func:`crop_scales`) at a
    random position is accepted only if at least one face (ignore regions aside) lies wholly
    inside it; it keeps the faces whose centre lies strictly inside, with boxes and landmarks
    clipped to the crop. After ``tries`` rejected squares the whole image is kept. Returns the
    image, its faces and whether a crop was taken (if not, the caller pads to a square).
    An image without faces is cropped anywhere.
    """
    _, height, width = image.shape
    short = min(height, width)
    scales = crop_scales(min_ratio)
    boxes = faces.boxes
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    real = ~faces.ignore.bool()
    for _ in range(tries):
        side = max(1, int(scales[int(torch.randint(len(scales), ()).item())] * short))
        x0 = int(torch.randint(0, width - side + 1, ()).item())
        y0 = int(torch.randint(0, height - side + 1, ()).item())
        x1, y1 = x0 + side, y0 + side
        if len(boxes):
            whole = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
            if not (whole & real).any():
                continue
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        kept = faces.select(inside)
        offset = torch.tensor([x0, y0], dtype=kept.boxes.dtype)
        crop_boxes = (kept.boxes - offset.repeat(2)).clamp(0, side)
        marks = (kept.landmarks - offset).clamp(0, side)  # NaN (no landmarks) stays NaN
        return image[:, y0:y1, x0:x1], Faces(crop_boxes, marks, kept.ignore), True
    return image, faces, False


def pad_to_square(image: Tensor) -> Tensor:
    """Pad bottom/right to a square with the mean colour (boxes are unchanged)."""
    _, height, width = image.shape
    side = max(height, width)
    fill = (MEAN * 255).round().to(image.dtype)
    out = fill.expand(3, side, side).clone()
    out[:, :height, :width] = image
    return out


def horizontal_flip(image: Tensor, faces: Faces) -> tuple[Tensor, Faces]:
    """Mirror the image, its boxes and landmarks; left and right landmarks swap roles."""
    width = image.shape[-1]
    boxes = faces.boxes.clone()
    boxes[:, [0, 2]] = width - faces.boxes[:, [2, 0]]
    marks = faces.landmarks[:, FLIP_ORDER].clone()
    marks[..., 0] = width - marks[..., 0]
    return image.flip(-1), Faces(boxes, marks, faces.ignore)


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (anti-aliased) resize of a uint8 or float CHW image to ``size`` (h, w), as float."""
    return F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def normalize(image: Tensor) -> Tensor:
    """0..255 float or uint8 -> ImageNet-normalised float."""
    return (image.float() / 255 - MEAN) / STD


class TrainTransform:
    """Crop, photometric distortion, flip and resize to ``size`` x ``size``; returns the
    normalised float image and the faces in its pixels."""

    def __init__(
        self, size: int = 640, min_crop_ratio: float = 0.3, flip: float = 0.5, photometric: bool = True
    ) -> None:
        self.size = size
        self.min_crop_ratio = min_crop_ratio
        self.flip = flip
        self.jitter = v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05) if photometric else None

    def __call__(self, image: Tensor, faces: Faces) -> tuple[Tensor, Faces]:
        image, faces, cropped = random_square_crop(image, faces, self.min_crop_ratio)
        if self.jitter is not None:
            image = self.jitter(image)
        if not cropped:
            image = pad_to_square(image)
        if torch.rand(()).item() < self.flip:
            image, faces = horizontal_flip(image, faces)
        side = image.shape[-1]
        scale = self.size / side
        image = resize(image, (self.size, self.size))
        boxes = faces.boxes * scale
        # faces that became sub-pixel after the crop and resize teach nothing
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(dim=1)
        return normalize(image), Faces(boxes[keep], faces.landmarks[keep] * scale, faces.ignore[keep])


class EvalTransform:
    """Resize so that the shorter side is ``short_side`` (the longer at most ``max_side``);
    returns the normalised image and the scale factor applied."""

    def __init__(self, short_side: int = 720, max_side: int = 1280) -> None:
        self.short_side = short_side
        self.max_side = max_side

    def __call__(self, image: Tensor) -> tuple[Tensor, float]:
        _, height, width = image.shape
        scale = min(self.short_side / min(height, width), self.max_side / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return normalize(resize(image, size)), scale
