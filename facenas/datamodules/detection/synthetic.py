"""Seeded synthetic face-detection data: drawn faces with 5 true landmarks on cluttered
backgrounds, in several domain styles that favour different detector hyper-parameters.

Domains:

* ``plain``: a few faces of every scale, daylight, mild clutter.
* ``crowd``: dozens of tiny faces in rows (small anchors, dense matching).
* ``masked``: the lower face is covered by a mask (landmarks stay the true mouth corners).
* ``lowlight``: dark, noisy and blurred.
* ``fisheye``: a radial lens warp; boxes enclose the warped faces, landmarks are warped too.
* ``cartoon``: flat colours, thick outlines, unnatural skin colours.

Everything is a pure function of ``(seed, domain, index)``. :func:`synthesize_detection_image`
draws one image on the fly; :func:`generate_detection_dataset` caches a set to a folder in the
real formats (WIDER ``wider_face_bbx_gt.txt`` and RetinaFace ``label.txt``), so the same
readers serve real and synthetic data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

DOMAINS = ("plain", "crowd", "masked", "lowlight", "fisheye", "cartoon")

SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 155], [224, 172, 125], [198, 134, 86], [141, 85, 54], [92, 56, 38]], dtype=float
)
CARTOON_SKINS = np.array(
    [[255, 220, 60], [120, 200, 120], [130, 170, 255], [255, 150, 200], [250, 250, 250]], dtype=float
)


@dataclass(frozen=True)
class DomainStyle:
    """How a domain draws its images."""

    faces: tuple[int, int]  # number of faces (inclusive range)
    size: tuple[float, float]  # face width as a fraction of the shorter image side (log-uniform)
    clutter: int  # background shapes
    distractors: int = 0  # skin-coloured non-face blobs
    mask: bool = False
    lowlight: bool = False
    fisheye: float = 0.0  # radial warp strength
    cartoon: bool = False


STYLES: dict[str, DomainStyle] = {
    "plain": DomainStyle(faces=(1, 6), size=(0.04, 0.45), clutter=12, distractors=1),
    "crowd": DomainStyle(faces=(15, 45), size=(0.025, 0.08), clutter=20, distractors=3),
    "masked": DomainStyle(faces=(1, 6), size=(0.05, 0.4), clutter=12, mask=True),
    "lowlight": DomainStyle(faces=(1, 5), size=(0.05, 0.4), clutter=10, distractors=1, lowlight=True),
    "fisheye": DomainStyle(faces=(2, 7), size=(0.05, 0.3), clutter=14, fisheye=0.6),
    "cartoon": DomainStyle(faces=(1, 6), size=(0.06, 0.4), clutter=8, cartoon=True),
}


def _rng(seed: int, domain: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, DOMAINS.index(domain), index])


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, width: int, height: int, style: DomainStyle) -> Image.Image:
    top, bottom = np.array(_color(rng, 40, 230), float), np.array(_color(rng, 20, 200), float)
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    outline = (0, 0, 0) if style.cartoon else None
    for _ in range(style.clutter):
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        w, h = rng.uniform(0.03, 0.4) * width, rng.uniform(0.03, 0.4) * height
        kind = rng.integers(0, 3)
        fill = _color(rng)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill, outline=outline, width=3)
        elif kind == 1:
            draw.line([x0, y0, x0 + w, y0 + h], fill=fill, width=int(rng.integers(1, 8)))
        else:
            pts = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 6)))]
            draw.polygon(pts, fill=fill, outline=outline)
    for _ in range(style.distractors):  # skin-coloured blobs that are not faces
        w = rng.uniform(0.03, 0.15) * min(width, height)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - w)
        tone = SKIN_TONES[rng.integers(len(SKIN_TONES))]
        draw.ellipse([x0, y0, x0 + w * rng.uniform(0.5, 2.0), y0 + w], fill=tuple(int(v) for v in tone))
    return image


def _draw_face(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, w: float, style: DomainStyle
) -> tuple[list[float], np.ndarray]:
    """Draw a face centred at (cx, cy) with width ``w``; return its box (xyxy) and 5 landmarks."""
    h = w * rng.uniform(1.15, 1.4)
    yaw = rng.uniform(-0.25, 0.25)  # shifts the features sideways: a cheap turned head
    palette = CARTOON_SKINS if style.cartoon else SKIN_TONES
    skin = palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.1)
    skin_c = tuple(int(v) for v in np.clip(skin, 0, 255))
    outline = (0, 0, 0) if style.cartoon else tuple(int(v) for v in np.clip(skin * 0.7, 0, 255))
    line = max(1, int(w / 25)) * (2 if style.cartoon else 1)
    hair = _color(rng, 0, 120)
    draw.ellipse([cx - w * 0.55, cy - h * 0.62, cx + w * 0.55, cy + h * 0.1], fill=hair)  # hair
    draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=skin_c, outline=outline, width=line)
    fx = cx + yaw * w * 0.35
    eye_dx, eye_y = w * rng.uniform(0.17, 0.22), cy - h * rng.uniform(0.05, 0.12)
    eye_r = w * (0.09 if style.cartoon else rng.uniform(0.045, 0.065))
    left_eye, right_eye = (fx - eye_dx, eye_y), (fx + eye_dx, eye_y)
    for ex, ey in (left_eye, right_eye):
        draw.ellipse(
            [ex - eye_r * 1.4, ey - eye_r, ex + eye_r * 1.4, ey + eye_r], fill=(250, 250, 250), outline=outline
        )
        draw.ellipse([ex - eye_r * 0.6, ey - eye_r * 0.6, ex + eye_r * 0.6, ey + eye_r * 0.6], fill=_color(rng, 0, 90))
        draw.line(
            [ex - eye_r * 1.5, ey - eye_r * 2.0, ex + eye_r * 1.5, ey - eye_r * 2.2], fill=hair, width=max(1, line)
        )
    nose = (fx + yaw * w * 0.1, cy + h * rng.uniform(0.06, 0.12))
    draw.polygon(
        [(nose[0], nose[1] - h * 0.12), (nose[0] - w * 0.06, nose[1]), (nose[0] + w * 0.06, nose[1])],
        fill=tuple(int(v) for v in np.clip(skin * 0.85, 0, 255)),
        outline=outline,
    )
    mouth_y, mouth_dx = cy + h * rng.uniform(0.22, 0.28), w * rng.uniform(0.13, 0.18)
    left_mouth, right_mouth = (fx - mouth_dx, mouth_y), (fx + mouth_dx, mouth_y)
    draw.arc(
        [left_mouth[0], mouth_y - h * 0.06, right_mouth[0], mouth_y + h * 0.06],
        0,
        180,
        fill=(150, 40, 50),
        width=max(1, line),
    )
    if style.mask:
        mask_color = [(235, 240, 245), (120, 170, 220), (30, 30, 30)][int(rng.integers(3))]
        draw.rounded_rectangle(
            [cx - w * 0.47, nose[1] - h * 0.04, cx + w * 0.47, cy + h * 0.42], radius=w * 0.12, fill=mask_color
        )
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    return box, np.array([left_eye, right_eye, nose, left_mouth, right_mouth], dtype=np.float32)


def _box_iou(box: list[float], others: list[list[float]]) -> float:
    if not others:
        return 0.0
    o = np.asarray(others)
    lt, rb = np.maximum(box[:2], o[:, :2]), np.minimum(box[2:], o[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float((inter / (area + (o[:, 2:] - o[:, :2]).prod(1) - inter)).max())


def _fisheye(
    image: Image.Image, boxes: np.ndarray, landmarks: np.ndarray, strength: float
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Warp with a radial lens (centre magnified) and move annotations with the same mapping."""
    width, height = image.size
    half = np.array([width / 2, height / 2])
    norm = np.linalg.norm(half)

    def src_radius(r_out: np.ndarray) -> np.ndarray:  # output radius -> source radius (monotone)
        return r_out * (1 + strength * r_out**2) / (1 + strength)

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    pix = torch.stack([xs * half[0], ys * half[1]], -1).double() / norm
    r_out = pix.norm(dim=-1, keepdim=True)
    scale = torch.where(
        r_out > 0, torch.as_tensor(src_radius(r_out.numpy())) / r_out.clamp(min=1e-9), torch.ones_like(r_out)
    )
    grid = (pix * scale * norm / torch.tensor(half)).float()[None]
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    warped = torch.nn.functional.grid_sample(tensor, grid, mode="bilinear", padding_mode="border", align_corners=True)
    out_image = Image.fromarray(warped[0].permute(1, 2, 0).clamp(0, 255).byte().numpy())

    from .domains import radial_forward

    forward = radial_forward(src_radius, half, norm, r_max=2.0, steps=4001)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    centre, radius = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2, (boxes[:, None, 2:] - boxes[:, None, :2]) / 2
    outline = forward(centre + radius * np.stack([np.cos(t), np.sin(t)], -1)[None])
    new_boxes = np.concatenate([outline.min(1), outline.max(1)], axis=1).astype(np.float32)
    return out_image, new_boxes, forward(landmarks).astype(np.float32)


def synthesize_detection_image(
    index: int, *, domain: str = "plain", size: tuple[int, int] = (640, 480), seed: int = 0
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Draw image ``index`` of a domain.

    Returns:
        ``(image, boxes (N, 4) xyxy float32, landmarks (N, 5, 2) float32)``; an image may have
        no faces only if none fit, which the generator avoids.
    """
    if domain not in STYLES:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose from {', '.join(DOMAINS)}")
    style = STYLES[domain]
    rng = _rng(seed, domain, index)
    width, height = size
    image = _background(rng, width, height, style)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    boxes: list[list[float]] = []
    marks: list[np.ndarray] = []
    wanted = int(rng.integers(style.faces[0], style.faces[1] + 1))
    lo, hi = math.log(max(8.0, style.size[0] * short)), math.log(max(9.0, style.size[1] * short))
    # larger faces first so that small ones may overlap them a little, as in real crowds
    widths = sorted(np.exp(rng.uniform(lo, hi, wanted)), reverse=True)
    for w in widths:
        for _ in range(20):
            h = w * 1.3
            cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
            candidate = [cx - w / 2, cy - h * 0.7, cx + w / 2, cy + h * 0.7]
            if _box_iou(candidate, boxes) < 0.05:
                box, lm = _draw_face(draw, rng, cx, cy, w, style)
                boxes.append(box)
                marks.append(lm)
                break
    box_arr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    mark_arr = np.array(marks, dtype=np.float32).reshape(-1, 5, 2)
    if style.fisheye:
        image, box_arr, mark_arr = _fisheye(image, box_arr, mark_arr, style.fisheye)
    if style.lowlight:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 1.8))))
        pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.2, 0.4)
        pixels += rng.normal(0, 8, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    elif not style.cartoon:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    box_arr[:, 0::2] = box_arr[:, 0::2].clip(0, width)
    box_arr[:, 1::2] = box_arr[:, 1::2].clip(0, height)
    return image, box_arr, mark_arr


def generate_detection_dataset(
    root: str | Path,
    num_images: int,
    *,
    domains: str | list[str] = "plain",
    size: tuple[int, int] = (640, 480),
    seed: int = 0,
    quality: int = 92,
) -> Path:
    """Cache a synthetic set in WIDER/RetinaFace layout and return the folder.

    Writes ``images/<k>--<domain>/<domain>_<index>.jpg``, ``wider_face_bbx_gt.txt`` (official
    format), ``label.txt`` (RetinaFace format, with landmarks) and ``meta.json``. Images are
    spread round-robin over ``domains``. A folder already holding the same set is reused.
    """
    domain_list = [domains] if isinstance(domains, str) else list(domains)
    for d in domain_list:
        if d not in STYLES:
            raise ValueError(f"unknown synthetic domain {d!r}; choose from {', '.join(DOMAINS)}")
    root = Path(root)
    meta = {
        "num_images": num_images,
        "domains": domain_list,
        "size": list(size),
        "seed": seed,
        "styles": {d: asdict(STYLES[d]) for d in domain_list},
    }
    meta_file = root / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) == json.loads(json.dumps(meta)):
        return root
    from .formats import write_wider_annotations

    written = []
    for index in range(num_images):
        domain = domain_list[index % len(domain_list)]
        image, boxes, marks = synthesize_detection_image(index, domain=domain, size=size, seed=seed)
        name = f"{DOMAINS.index(domain)}--{domain}/{domain}_{index:05d}.jpg"
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / name, quality=quality)
        written.append((name, np.asarray(boxes, np.float32).reshape(-1, 4), None, np.asarray(marks, np.float32)))
    write_wider_annotations(root, written)
    meta_file.write_text(json.dumps(meta, indent=1))
    return root
