"""Face-detection domains made from real annotated photos by seeded transforms.

Each transform family turns one image and its faces into a shifted domain, moving boxes and
landmarks with the pixels, in the spirit of the twelve face-detection datasets of HyperFD:

* geometric: ``tiny_crowd`` (downscale to 0.3-0.4 and a 2 x 2 mosaic, WIDER-hard-like),
  ``portrait`` (crop so the largest face fills 25-50 % of the image, UMDAA-02 / WIKI-like),
  ``fisheye`` (a radial lens warp, WIDER-360-like), ``rotate`` (by 90 / 180 / 270 degrees);
* photometric (boxes unchanged): ``low_light`` (gamma, gain, shot and read noise, DARK FACE-like),
  ``fog`` (atmospheric scattering), ``rain`` and ``snow`` (streaks / flakes), ``surveillance``
  (motion blur and JPEG at quality ~15, UFDD-like), ``mask`` (a mask drawn over the lower face
  from the landmarks, MAFA-like);
* label style: ``loose_boxes`` (boxes enlarged and jittered by ~20 %, AFLW / WIKI weak labels).

Every family is a pure function ``(image, faces, rng, **strength) -> (image, faces, dropped)``
on a uint8 ``H x W x 3`` numpy image and :class:`FaceArrays`, with an explicit numpy
``Generator``; it is registered by name in :data:`DOMAIN_FAMILIES`. A face whose box mostly
leaves the image is dropped and counted; kept boxes are clipped to the image, and the landmarks of a face
with a point outside its clipped box are removed (NaN). A :class:`Domain` is a list of
``{family, args}`` steps and a seed; :func:`build_domain` materialises one from the WIDER
training or validation images as a folder in WIDER format (``wider_face_bbx_gt.txt``, plus a
RetinaFace ``label.txt`` with the landmarks), cached by a hash of source, steps, seed and count.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from facenas.core.registry import Registry

FamilyFn = Callable[..., tuple[np.ndarray, "FaceArrays", int]]
DOMAIN_FAMILIES: Registry[FamilyFn] = Registry("domain family")

# the WIDER subsets under the shared data folder that domains are made from
SOURCES = {
    "wider_train": ("widerface/wider_face_split/wider_face_train_bbx_gt.txt", "widerface/WIDER_train/images"),
    "wider_val": ("widerface/wider_face_split/wider_face_val_bbx_gt.txt", "widerface/WIDER_val/images"),
}

# the five landmarks as fractions of a face box (left eye, right eye, nose, mouth corners), used
# for the mask of a face without annotated landmarks
LANDMARK_TEMPLATE = np.array([[0.31, 0.40], [0.69, 0.40], [0.50, 0.58], [0.35, 0.76], [0.65, 0.76]], np.float32)


@dataclass
class FaceArrays:
    """The faces of one image: ``boxes`` (N, 4) xyxy float32, ``landmarks`` (N, 5, 2) float32
    (NaN where absent), ``ignore`` (N,) bool."""

    boxes: np.ndarray
    landmarks: np.ndarray
    ignore: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.landmarks = (
            np.full((n, 5, 2), np.nan, np.float32)
            if self.landmarks is None
            else np.asarray(self.landmarks, np.float32).reshape(n, 5, 2)
        )
        self.ignore = np.zeros(n, bool) if self.ignore is None else np.asarray(self.ignore, bool).reshape(n)

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> FaceArrays:
        """The faces where ``keep`` is True."""
        return FaceArrays(self.boxes[keep], self.landmarks[keep], self.ignore[keep])


def _range(value: float | Sequence[float], rng: np.random.Generator) -> float:
    """A number, or a uniform draw from a ``[lo, hi]`` pair."""
    if isinstance(value, int | float):
        return float(value)
    lo, hi = (float(v) for v in value)
    return float(rng.uniform(lo, hi))


def settle(faces: FaceArrays, width: int, height: int, min_visible: float = 0.5) -> tuple[FaceArrays, int]:
    """Clip moved faces to a ``width x height`` image: a face keeping less than ``min_visible`` of
    its box area (or under 1 px a side) is dropped; landmarks outside the clipped box become NaN.
    Returns the kept faces and how many were dropped."""
    boxes = faces.boxes.copy()
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w >= 1) & (h >= 1) & (w * h >= min_visible * np.maximum(area, 1e-9))
    marks = faces.landmarks.copy()
    lo, hi = boxes[:, None, :2], boxes[:, None, 2:]
    outside = ~((marks >= lo) & (marks <= hi)).all((-1, -2))  # a face with any NaN point stays all NaN
    marks[outside] = np.nan
    return FaceArrays(boxes, marks, faces.ignore).select(keep), int((~keep).sum())


def _map_faces(faces: FaceArrays, forward: Callable[[np.ndarray], np.ndarray], samples: int = 16) -> FaceArrays:
    """Faces moved by a point map ``forward`` ((..., 2) -> (..., 2)): each box becomes the
    bounding box of its mapped boundary, landmarks are mapped."""
    if len(faces) == 0:
        return FaceArrays(np.zeros((0, 4)), None, None)
    t = np.linspace(0, 1, samples, dtype=np.float64)
    x1, y1, x2, y2 = (faces.boxes[:, k, None].astype(np.float64) for k in range(4))
    edges = [
        np.stack([x1 + (x2 - x1) * t, np.broadcast_to(y1, (len(x1), samples))], -1),
        np.stack([x1 + (x2 - x1) * t, np.broadcast_to(y2, (len(x1), samples))], -1),
        np.stack([np.broadcast_to(x1, (len(x1), samples)), y1 + (y2 - y1) * t], -1),
        np.stack([np.broadcast_to(x2, (len(x1), samples)), y1 + (y2 - y1) * t], -1),
    ]
    outline = forward(np.concatenate(edges, 1)).reshape(len(faces), -1, 2)
    boxes = np.concatenate([outline.min(1), outline.max(1)], 1)
    return FaceArrays(boxes, forward(faces.landmarks.astype(np.float64)), faces.ignore)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------- geometric


def _scaled(
    sx: float, sy: float, ox: float, oy: float, mirror: float | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The point map of a scale by ``(sx, sy)``, a mirror in a tile ``mirror`` pixels wide (if
    given), and a shift by ``(ox, oy)``."""

    def forward(p: np.ndarray) -> np.ndarray:
        x, y = p[..., 0] * sx, p[..., 1] * sy
        return np.stack([ox + (x if mirror is None else mirror - x), oy + y], -1)

    return forward


@DOMAIN_FAMILIES.register("tiny_crowd")
def tiny_crowd(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    scale: float | Sequence[float] = (0.3, 0.4),
    tiles: Sequence[tuple[np.ndarray, FaceArrays]] = (),
) -> tuple[np.ndarray, FaceArrays, int]:
    """A 2 x 2 mosaic of photos downscaled to ``scale`` of this image's size, each mirrored at
    random: the image itself and ``tiles`` (up to three other ``(image, faces)``, each fitted
    into its cell with its aspect ratio kept; the image itself fills the cells they leave). The
    canvas is ``2 x scale`` of the original, so faces come out at a third of their size."""
    height, width = image.shape[:2]
    s = _range(scale, rng)
    tw, th = max(1, round(width * s)), max(1, round(height * s))
    sources = [(image, faces), *list(tiles)[:3]]
    sources += [(image, faces)] * (4 - len(sources))
    canvas = np.zeros((2 * th, 2 * tw, 3), np.uint8)
    parts = []
    for cell, (picture, found) in enumerate(sources):
        ph, pw = picture.shape[:2]
        fit = min(tw / pw, th / ph)
        cw, ch = min(tw, max(1, round(pw * fit))), min(th, max(1, round(ph * fit)))
        sx, sy = cw / pw, ch / ph
        flip = bool(rng.integers(2))
        tile = _resize(picture, cw, ch)
        ox, oy = (cell % 2) * tw + (tw - cw) // 2, (cell // 2) * th + (th - ch) // 2
        canvas[oy : oy + ch, ox : ox + cw] = tile[:, ::-1] if flip else tile

        moved = _map_faces(found, _scaled(sx, sy, ox, oy, cw if flip else None), samples=2)
        if flip:  # a mirror swaps the left and right landmarks
            moved.landmarks = moved.landmarks[:, [1, 0, 2, 4, 3]]
        parts.append(moved)
    merged = FaceArrays(
        np.concatenate([p.boxes for p in parts]),
        np.concatenate([p.landmarks for p in parts]),
        np.concatenate([p.ignore for p in parts]),
    )
    kept, dropped = settle(merged, 2 * tw, 2 * th)
    return canvas, kept, dropped


@DOMAIN_FAMILIES.register("portrait")
def portrait(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    fill: float | Sequence[float] = (0.25, 0.5),
    min_visible: float = 0.5,
) -> tuple[np.ndarray, FaceArrays, int]:
    """Crop (with the image's aspect ratio) so that the largest face's box covers ``fill`` of the
    crop's area, the face at a random place inside; an image without a face is kept whole."""
    height, width = image.shape[:2]
    valid = np.flatnonzero(~faces.ignore)
    if len(valid) == 0:
        return image, faces, 0
    areas = (faces.boxes[valid, 2:] - faces.boxes[valid, :2]).prod(1)
    x1, y1, x2, y2 = faces.boxes[valid[int(areas.argmax())]].astype(float)
    fw, fh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    f = _range(fill, rng)
    k = min(1.0, np.sqrt(fw * fh / f / (width * height)))  # crop side as a fraction of the image side
    cw, ch = max(fw, width * k), max(fh, height * k)
    cw, ch = min(cw, width), min(ch, height)
    left = rng.uniform(max(0.0, x2 - cw), min(x1, width - cw) + 1e-9)
    top = rng.uniform(max(0.0, y2 - ch), min(y1, height - ch) + 1e-9)
    left, top = int(np.clip(round(left), 0, width - 1)), int(np.clip(round(top), 0, height - 1))
    right, bottom = min(width, left + max(1, round(cw))), min(height, top + max(1, round(ch)))
    crop = image[top:bottom, left:right]
    moved = _map_faces(faces, lambda p: p - np.array([left, top]), samples=2)
    kept, dropped = settle(moved, right - left, bottom - top, min_visible)
    return np.ascontiguousarray(crop), kept, dropped


def radial_forward(
    src_radius: Callable[[np.ndarray], np.ndarray], centre: np.ndarray, norm: float, r_max: float, steps: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The forward map (source pixel -> output pixel, points ``(..., 2)``) of a radial warp about
    ``centre`` that is given by its inverse ``src_radius`` (output radius -> source radius, in
    units of ``norm``, monotone): inverted by interpolating a table of ``steps`` output radii up
    to ``r_max``. Boxes and landmarks move through it while the pixels are resampled with the
    inverse."""
    table_out = np.linspace(0, r_max, steps)
    table_in = src_radius(table_out)

    def forward(points: np.ndarray) -> np.ndarray:
        rel = (points - centre) / norm
        r_in = np.linalg.norm(rel, axis=-1, keepdims=True)
        r_new = np.interp(r_in, table_in, table_out)
        return centre + np.where(r_in > 0, rel * r_new / np.maximum(r_in, 1e-12), rel) * norm

    return forward


def _fisheye_radius(strength: float) -> Callable[[np.ndarray], np.ndarray]:
    """Output radius -> source radius (both over the half diagonal): monotone, fixed at 0 and 1,
    magnifying the centre and squeezing the rim."""
    return lambda r: r * (1 + strength * r**2) / (1 + strength)


@DOMAIN_FAMILIES.register("fisheye")
def fisheye(
    image: np.ndarray, faces: FaceArrays, rng: np.random.Generator, strength: float | Sequence[float] = (0.4, 0.8)
) -> tuple[np.ndarray, FaceArrays, int]:
    """A radial lens warp about the image centre (centre magnified, rim squeezed); boxes become
    the bounding boxes of their warped outlines."""
    height, width = image.shape[:2]
    k = _range(strength, rng)
    src_radius = _fisheye_radius(k)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    norm = float(np.linalg.norm(centre)) or 1.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    rel = np.stack([xs - centre[0], ys - centre[1]], -1) / norm
    r_out = np.linalg.norm(rel, axis=-1, keepdims=True)
    scale = np.where(r_out > 0, src_radius(r_out) / np.maximum(r_out, 1e-12), 1.0)
    src = centre + rel * scale * norm
    coords = [src[..., 1], src[..., 0]]
    out = np.stack(
        [ndimage.map_coordinates(image[..., c], coords, order=1, mode="nearest") for c in range(image.shape[2])], -1
    )
    forward = radial_forward(src_radius, centre, norm, r_max=1.5, steps=6001)
    kept, dropped = settle(_map_faces(faces, forward), width, height)
    return out.astype(np.uint8), kept, dropped


@DOMAIN_FAMILIES.register("rotate")
def rotate(
    image: np.ndarray, faces: FaceArrays, rng: np.random.Generator, angles: Sequence[int] = (90, 180, 270)
) -> tuple[np.ndarray, FaceArrays, int]:
    """Rotate counter-clockwise by an angle drawn from ``angles`` (multiples of 90 degrees)."""
    angle = int(rng.choice(np.asarray(angles)))
    if angle % 90:
        raise ValueError(f"rotate: angles must be multiples of 90, got {angle}")
    turns = (angle // 90) % 4
    height, width = image.shape[:2]
    out = np.ascontiguousarray(np.rot90(image, turns))

    def forward(p: np.ndarray) -> np.ndarray:  # pixel corners: x in [0, W], y in [0, H]
        x, y = p[..., 0], p[..., 1]
        if turns == 1:
            return np.stack([y, width - x], -1)
        if turns == 2:
            return np.stack([width - x, height - y], -1)
        if turns == 3:
            return np.stack([height - y, x], -1)
        return p.copy()

    kept, dropped = settle(_map_faces(faces, forward, samples=2), out.shape[1], out.shape[0])
    return out, kept, dropped


# ---------------------------------------------------------------------------------- photometric


@DOMAIN_FAMILIES.register("low_light")
def low_light(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    gamma: float | Sequence[float] = (1.5, 3.0),
    gain: float | Sequence[float] = (0.1, 0.35),
    photons: float | Sequence[float] = (50.0, 300.0),
    read_noise: float | Sequence[float] = (0.005, 0.02),
) -> tuple[np.ndarray, FaceArrays, int]:
    """A dark exposure: linear light ``gain x x^gamma``, Poisson shot noise at a full scale of
    ``photons`` electrons, Gaussian read noise (fraction of full scale), back to 8 bits."""
    x = image.astype(np.float64) / 255.0
    x = _range(gain, rng) * x ** _range(gamma, rng)
    full = _range(photons, rng)
    x = rng.poisson(x * full) / full + rng.normal(0.0, _range(read_noise, rng), x.shape)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8), faces, 0


@DOMAIN_FAMILIES.register("fog")
def fog(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    density: float | Sequence[float] = (1.0, 2.5),
    airlight: float | Sequence[float] = (0.75, 0.95),
) -> tuple[np.ndarray, FaceArrays, int]:
    """Haze by atmospheric scattering, ``I = J t + A (1 - t)`` with ``t = exp(-density d)``; the
    depth ``d`` grows from 0.2 at the bottom row to 1 at the top (a ground-plane guess)."""
    height = image.shape[0]
    depth = np.linspace(1.0, 0.2, height)[:, None, None]
    t = np.exp(-_range(density, rng) * depth)
    a = _range(airlight, rng)
    x = image.astype(np.float64) / 255.0 * t + a * (1 - t)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8), faces, 0


def _streaks(
    image: np.ndarray, rng: np.random.Generator, count: int, length: float, angle: float, width: int, blur: float
) -> np.ndarray:
    height, w = image.shape[:2]
    layer = Image.new("L", (w, height), 0)
    draw = ImageDraw.Draw(layer)
    xs, ys = rng.uniform(0, w, count), rng.uniform(0, height, count)
    dx, dy = length * np.sin(np.radians(angle)), length * np.cos(np.radians(angle))
    values = rng.integers(150, 256, count)
    for x, y, v in zip(xs, ys, values):
        draw.line([(x, y), (x + dx, y + dy)], fill=int(v), width=width)
    if blur > 0:
        layer = layer.filter(ImageFilter.GaussianBlur(blur))
    alpha = np.asarray(layer, np.float64)[..., None] / 255.0 * 0.8
    return np.clip(np.round(image * (1 - alpha) + 235 * alpha), 0, 255).astype(np.uint8)


@DOMAIN_FAMILIES.register("rain")
def rain(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    density: float | Sequence[float] = (0.05, 0.15),
    length: float | Sequence[float] = (0.04, 0.1),
    angle: float | Sequence[float] = (-20.0, 20.0),
) -> tuple[np.ndarray, FaceArrays, int]:
    """Rain streaks: ``density`` streaks per 100 pixels, ``length`` a fraction of the image
    height, slanted by ``angle`` degrees, softly blurred and blended in bright."""
    height, width = image.shape[:2]
    count = int(_range(density, rng) * height * width / 100)
    out = _streaks(image, rng, count, _range(length, rng) * height, _range(angle, rng), 1, 0.7)
    return out, faces, 0


@DOMAIN_FAMILIES.register("snow")
def snow(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    density: float | Sequence[float] = (0.02, 0.06),
    size: float | Sequence[float] = (0.004, 0.01),
) -> tuple[np.ndarray, FaceArrays, int]:
    """Snow flakes: ``density`` flakes per 100 pixels of ``size`` (a fraction of the shorter side),
    falling nearly straight."""
    height, width = image.shape[:2]
    count = int(_range(density, rng) * height * width / 100)
    side = max(1, round(_range(size, rng) * min(height, width)))
    out = _streaks(image, rng, count, side, float(rng.uniform(-10, 10)), side, side / 3)
    return out, faces, 0


@DOMAIN_FAMILIES.register("surveillance")
def surveillance(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    blur: float | Sequence[float] = (0.005, 0.015),
    quality: int | Sequence[int] = (10, 20),
) -> tuple[np.ndarray, FaceArrays, int]:
    """Linear motion blur (length ``blur`` of the longer side, random direction) then JPEG
    compression at ``quality`` (UFDD-like surveillance frames)."""
    length = max(1, round(_range(blur, rng) * max(image.shape[:2])))
    theta = rng.uniform(0, np.pi)
    size = 2 * length + 1
    kernel = np.zeros((size, size))
    t = np.linspace(-length, length, 4 * size)
    kernel[np.round(length + t * np.sin(theta)).astype(int), np.round(length + t * np.cos(theta)).astype(int)] = 1
    kernel /= kernel.sum()
    blurred = np.stack(
        [ndimage.convolve(image[..., c].astype(np.float64), kernel, mode="nearest") for c in range(3)], -1
    )
    buffer = io.BytesIO()
    q = int(round(_range(quality, rng)))
    Image.fromarray(np.clip(np.round(blurred), 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=q)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB")), faces, 0


@DOMAIN_FAMILIES.register("mask")
def mask(
    image: np.ndarray, faces: FaceArrays, rng: np.random.Generator, fraction: float = 1.0
) -> tuple[np.ndarray, FaceArrays, int]:
    """Draw a face mask over the lower face of ``fraction`` of the faces (ignore regions aside):
    from just below the eyes (between eyes and nose) to the chin, across the box, through the
    landmarks; a face without landmarks uses :data:`LANDMARK_TEMPLATE` placed in its box."""
    out = Image.fromarray(image)
    draw = ImageDraw.Draw(out)
    for k in range(len(faces)):
        if faces.ignore[k] or rng.uniform() >= fraction:
            continue
        x1, y1, x2, y2 = faces.boxes[k].astype(float)
        marks = faces.landmarks[k].astype(float)
        if not np.isfinite(marks).all():
            marks = np.array([x1, y1]) + LANDMARK_TEMPLATE * np.array([x2 - x1, y2 - y1])
        eyes_y, nose_y = marks[:2, 1].mean(), marks[2, 1]
        top = eyes_y + 0.55 * (nose_y - eyes_y)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3)) if rng.uniform() < 0.5 else (220, 225, 230)
        left = min(marks[3, 0], marks[0, 0]) - 0.12 * (x2 - x1)
        right = max(marks[4, 0], marks[1, 0]) + 0.12 * (x2 - x1)
        polygon = [(left, top), (right, top), (right, marks[3:, 1].max() + 0.05 * (y2 - y1)), ((left + right) / 2, y2),
                   (left, marks[3:, 1].max() + 0.05 * (y2 - y1))]  # fmt: skip
        draw.polygon([(float(np.clip(x, x1, x2)), float(np.clip(y, y1, y2))) for x, y in polygon], fill=colour)
    return np.asarray(out), faces, 0


# ---------------------------------------------------------------------------------- label style


@DOMAIN_FAMILIES.register("loose_boxes")
def loose_boxes(
    image: np.ndarray,
    faces: FaceArrays,
    rng: np.random.Generator,
    grow: float | Sequence[float] = (0.0, 0.2),
    jitter: float = 0.1,
) -> tuple[np.ndarray, FaceArrays, int]:
    """Weak labels: each box grows by a drawn fraction of its size (``grow``) and its centre
    moves by up to ``jitter`` of its size, as loosely drawn boxes; the pixels are unchanged."""
    boxes = faces.boxes.astype(np.float64)
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-jitter, jitter, size.shape) * size
    half = size * (1 + np.array([_range(grow, rng) for _ in range(len(boxes))]))[:, None] / 2
    moved = FaceArrays(np.concatenate([centre - half, centre + half], 1), faces.landmarks, faces.ignore)
    kept, dropped = settle(moved, image.shape[1], image.shape[0])
    return image, kept, dropped


# ---------------------------------------------------------------------------------- domains


PRESETS: dict[str, list[dict[str, Any]]] = {
    "tiny_crowd": [{"family": "tiny_crowd"}],
    "portrait": [{"family": "portrait"}],
    "fisheye": [{"family": "fisheye"}],
    "rotated": [{"family": "rotate", "args": {"angles": [90, 180, 270]}}],
    "dark": [{"family": "low_light"}],
    "fog": [{"family": "fog"}],
    "rain": [{"family": "rain"}],
    "snow": [{"family": "snow"}],
    "surveillance": [{"family": "surveillance"}],
    "masked": [{"family": "mask"}],
    "weak_labels": [{"family": "loose_boxes"}],
}


def _steps(families: str | Sequence[str | Mapping[str, Any]]) -> tuple[tuple[str, dict[str, Any]], ...]:
    if isinstance(families, str):
        families = [families]
    steps: list[tuple[str, dict[str, Any]]] = []
    for item in families:
        if isinstance(item, str):
            if item in PRESETS and item not in DOMAIN_FAMILIES:
                steps += _steps(PRESETS[item])
                continue
            item = {"family": item}
        unknown = set(item) - {"family", "args"}
        if unknown or "family" not in item:
            raise ValueError(f"a domain step is {{family: <name>, args: {{...}}}}, got {dict(item)!r}")
        name = DOMAIN_FAMILIES.canonical(str(item["family"]))
        fn = DOMAIN_FAMILIES.get(name)  # an unknown family fails here, naming the choices
        args = dict(item.get("args") or {})
        try:
            inspect.signature(fn).bind(None, None, None, **args)
        except TypeError as exc:
            raise ValueError(f"domain family {name!r}: {exc}") from None
        steps.append((name, args))
    return tuple(steps)


@dataclass(frozen=True)
class Domain:
    """A composable domain: transform steps applied in order, and a seed.

    Args:
        families: family names, preset names (:data:`PRESETS`) or ``{family, args}`` mappings.
        seed: image ``index`` of the domain draws its randomness from ``(seed, index)`` only.
    """

    families: Any
    seed: int = 0
    steps: tuple[tuple[str, dict[str, Any]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _steps(self.families))

    def spec(self) -> dict[str, Any]:
        """The steps and seed as plain data (what the cache hash covers)."""
        return {"steps": [{"family": name, "args": args} for name, args in self.steps], "seed": self.seed}

    @property
    def wants_tiles(self) -> bool:
        """Whether a step takes other photos (``tiles``, the mosaic of ``tiny_crowd``)."""
        return any("tiles" in inspect.signature(DOMAIN_FAMILIES.get(name)).parameters for name, _ in self.steps)

    def apply(
        self, image: Any, faces: FaceArrays, index: int, tiles: Sequence[tuple[np.ndarray, FaceArrays]] = ()
    ) -> tuple[Any, FaceArrays, int]:
        """Image ``index`` of the domain made from ``image`` (uint8 ``H x W x 3`` numpy, or a
        uint8 ``3 x H x W`` torch tensor, returned as the same kind) and its faces: ``(image,
        faces, dropped)``, the same bytes for the same seed and index. ``tiles`` (other photos
        and their faces, untransformed) go to the steps that take them."""
        if not isinstance(image, np.ndarray):  # a CHW torch tensor
            import torch

            out, faces, dropped = self.apply(image.permute(1, 2, 0).numpy(), faces, index, tiles)
            return torch.from_numpy(np.array(out)).permute(2, 0, 1), faces, dropped  # a writable copy
        rng = np.random.default_rng([self.seed, index])
        dropped = 0
        for name, args in self.steps:
            family = DOMAIN_FAMILIES.get(name)
            if tiles and "tiles" in inspect.signature(family).parameters and "tiles" not in args:
                args = {**args, "tiles": tiles}
            image, faces, lost = family(image, faces, rng, **args)
            dropped += lost
        return image, faces, dropped


def check_domain(spec: Mapping[str, Any], format: str | None = None) -> None:
    """Refuse a bad ``domain`` argument of the data module before anything is built: not a
    mapping, an unknown key or source, an unknown family, or a reader ``format`` given too."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"domain must be a mapping like {{source: wider_train, families: [fog]}}, got {spec!r}")
    allowed = set(inspect.signature(build_domain).parameters)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        # the keys are not listed: the CLI names the first data-module argument a message mentions
        raise ValueError(f"unknown domain key {unknown[0]!r} (the keys are the arguments of build_domain)")
    if format is not None:
        raise ValueError(f"domain and format {format!r} are both set: a domain is read in its own (WIDER) format")
    source = spec.get("source", "wider_train")
    if source not in SOURCES:
        raise ValueError(f"unknown domain source {source!r}; choose from {', '.join(SOURCES)}")
    Domain(spec.get("families", ()), int(spec.get("seed", 0)))


def build_domain(
    source: str = "wider_train",
    families: Any = (),
    seed: int = 0,
    images: int | None = None,
    start: int = 0,
    root: str | Path = "data/domains",
    data_root: str | Path = "../shared/data",
    quality: int = 95,
) -> Path:
    """Materialise a domain of a WIDER subset as a folder and return it.

    Takes ``images`` images (all when None) of ``source`` (``wider_train``: the 1,239 WIDER
    training images; ``wider_val``: the 394 validation ones) under ``data_root`` from image
    ``start`` on (in annotation-file order, wrapping around at the end), applies
    :class:`Domain` ``(families, seed)`` to image ``k`` with index ``k`` (a mosaic takes images
    ``k + 1 .. k + 3`` of the subset as its other tiles), and writes
    ``images/<event>/<name>.jpg``, ``wider_face_bbx_gt.txt`` (ignore regions as ``invalid``),
    ``label.txt`` (RetinaFace, with landmarks, -1 where absent) and ``meta.json`` (the spec and
    the number of dropped faces) to ``root/<hash>``, a hash of source, spec and count. A folder
    already built is reused. YAML: ``domain: {source: wider_val, families: [fog], seed: 1}``.
    """
    from .formats import read_wider, write_wider_annotations

    if source not in SOURCES:
        raise ValueError(f"unknown domain source {source!r}; choose from {', '.join(SOURCES)}")
    if start < 0 or (images is not None and images < 1):
        raise ValueError(f"domain start must be >= 0 and images >= 1, got start={start}, images={images}")
    domain = Domain(families, seed)
    meta: dict[str, Any] = {"source": source, "images": images, "quality": quality, **domain.spec()}
    if start:  # absent when 0: the folders built before ``start`` existed keep their hash
        meta["start"] = start
    digest = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(root) / digest
    if (folder / "meta.json").is_file():
        return folder
    annotations, image_root = (Path(data_root) / part for part in SOURCES[source])
    if not annotations.is_file():
        raise FileNotFoundError(f"domain source {source!r} needs {annotations}")
    every = read_wider(annotations, image_root, verify="none")
    count = len(every) if images is None else min(images, len(every))
    samples = [every[(start + k) % len(every)] for k in range(count)]
    # a folder of this process's own: builds side by side (hyperfd build --shard) may make the
    # same domain at once; the first to finish wins and the others discard theirs
    work = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    if work.exists():  # left by a killed build of this pid
        shutil.rmtree(work)
    written, dropped = [], 0

    def load(k: int) -> tuple[np.ndarray, FaceArrays]:
        sample = samples[k % len(samples)]
        return np.asarray(Image.open(sample.image).convert("RGB")), FaceArrays(
            sample.boxes, sample.landmarks, sample.ignore
        )

    for index, sample in enumerate(samples):
        pixels, faces = load(index)
        tiles = [load(index + k) for k in (1, 2, 3)] if domain.wants_tiles and len(samples) > 1 else []
        pixels, faces, lost = domain.apply(pixels, faces, index, tiles)
        dropped += lost
        name = str(Path(sample.name).with_suffix(".jpg"))
        (work / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(work / "images" / name, quality=quality)
        written.append((name, faces.boxes, faces.ignore, faces.landmarks))
    write_wider_annotations(work, written)
    (work / "meta.json").write_text(json.dumps({**meta, "built": len(samples), "dropped": dropped}, indent=1))
    try:
        work.rename(folder)
    except OSError:  # another process finished first
        if not (folder / "meta.json").is_file():
            raise
        shutil.rmtree(work, ignore_errors=True)
    return folder
    return folder
