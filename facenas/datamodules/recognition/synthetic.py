"""Seeded synthetic identities for face identification.

Each identity has fixed facial parameters (face shape, skin, eye spacing and size, brows, nose,
mouth, hair); each image of it varies pose (rotation, shift, scale), lighting and noise. Every
identity belongs to a group (``gender`` by default); groups differ in how many identities they
have and in how widely their parameters spread around the group's centre, so a model trained on
them is measurably less accurate on the tighter, smaller group: a test bed for fairness metrics.

:func:`render_identity_image` draws on the fly; :func:`generate_identity_dataset` caches a set as
one folder per identity plus ``labels.csv`` (``image,identity,gender``), which
:func:`facenas.datamodules.recognition.formats.read_identity_csv` reads like real data.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# parameter vector: name -> (centre, full-spread half-width); all in units of the face width
PARAMS: dict[str, tuple[float, float]] = {
    "aspect": (1.3, 0.15),  # face height / width
    "skin": (0.5, 0.5),  # position along the skin-tone ramp
    "eye_dx": (0.2, 0.05),
    "eye_y": (-0.08, 0.05),
    "eye_r": (0.055, 0.02),
    "iris": (0.5, 0.5),  # iris colour ramp
    "brow": (0.5, 0.5),  # brow thickness and tilt
    "nose": (0.1, 0.05),
    "mouth_w": (0.16, 0.05),
    "mouth_y": (0.25, 0.04),
    "hair": (0.5, 0.5),  # hair colour ramp
    "hair_h": (0.6, 0.15),  # how far the hair comes down
}
_SKINS = np.array([[255, 224, 196], [224, 172, 125], [141, 85, 54], [80, 50, 35]], dtype=float)
_HAIRS = np.array([[20, 15, 10], [90, 60, 30], [200, 170, 90], [150, 150, 150]], dtype=float)
_IRIS = np.array([[40, 30, 20], [60, 110, 160], [60, 140, 80]], dtype=float)


def _ramp(colours: np.ndarray, t: float) -> tuple[int, int, int]:
    t = float(np.clip(t, 0, 1)) * (len(colours) - 1)
    i = min(int(t), len(colours) - 2)
    c = colours[i] * (1 - (t - i)) + colours[i + 1] * (t - i)
    return tuple(int(v) for v in c)  # type: ignore[return-value]


@dataclass(frozen=True)
class GroupSpec:
    """A demographic group: its share of identities and the spread of its identities' parameters
    (1.0 = the full range; smaller = identities look more alike = harder to tell apart)."""

    name: str
    fraction: float
    spread: float


DEFAULT_GROUPS = (GroupSpec("female", 0.4, 0.55), GroupSpec("male", 0.6, 1.0))


def sample_identity(rng: np.random.Generator, spread: float = 1.0) -> dict[str, float]:
    """Draw one identity's fixed parameters."""
    return {k: float(c + rng.uniform(-1, 1) * s * spread) for k, (c, s) in PARAMS.items()}


def render_identity_image(params: dict[str, float], rng: np.random.Generator, size: int = 112) -> Image.Image:
    """Draw one image of an identity: the identity's face under a random pose, light and noise."""
    canvas = 2 * size  # draw large, then rotate and downscale (anti-aliasing)
    grey = rng.integers(50, 200)  # a plain, slightly tinted backdrop, as behind aligned face crops
    bg = tuple(int(np.clip(grey + v, 0, 255)) for v in rng.integers(-20, 21, 3))
    image = Image.new("RGB", (canvas, canvas), bg)
    draw = ImageDraw.Draw(image)
    w = canvas * 0.68
    h = w * params["aspect"]
    cx, cy = canvas / 2, canvas / 2 + canvas * 0.03
    skin = _ramp(_SKINS, params["skin"])
    hair = _ramp(_HAIRS, params["hair"])
    draw.ellipse([cx - w * 0.56, cy - h * 0.62, cx + w * 0.56, cy - h * 0.62 + h * (0.6 + params["hair_h"])], fill=hair)
    draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=skin)
    eye_y = cy + params["eye_y"] * h
    eye_r = params["eye_r"] * w
    brow_w = max(1, int(2 + 6 * params["brow"]))
    for side in (-1, 1):
        ex = cx + side * params["eye_dx"] * w
        draw.ellipse([ex - eye_r * 1.5, eye_y - eye_r, ex + eye_r * 1.5, eye_y + eye_r], fill=(245, 245, 245))
        draw.ellipse(
            [ex - eye_r * 0.7, eye_y - eye_r * 0.7, ex + eye_r * 0.7, eye_y + eye_r * 0.7],
            fill=_ramp(_IRIS, params["iris"]),
        )
        tilt = (params["brow"] - 0.5) * eye_r * 2 * side
        draw.line(
            [ex - eye_r * 1.7, eye_y - eye_r * 2.2 + tilt, ex + eye_r * 1.7, eye_y - eye_r * 2.2 - tilt],
            fill=hair,
            width=brow_w,
        )
    nose_y = cy + params["nose"] * h
    shade = tuple(int(v * 0.8) for v in skin)
    draw.polygon([(cx, eye_y + eye_r), (cx - w * 0.07, nose_y), (cx + w * 0.07, nose_y)], fill=shade)
    mouth_y, mouth_w = cy + params["mouth_y"] * h, params["mouth_w"] * w
    draw.arc([cx - mouth_w, mouth_y - h * 0.05, cx + mouth_w, mouth_y + h * 0.05], 0, 180, fill=(150, 40, 50), width=4)
    # pose: rotation, shift and scale in one affine map from output pixels to canvas pixels
    angle = np.deg2rad(rng.uniform(-8, 8))
    k = canvas / rng.uniform(0.94, 1.06) / size
    a, b = k * np.cos(angle), -k * np.sin(angle)
    d, e = k * np.sin(angle), k * np.cos(angle)
    ox, oy = canvas / 2 + rng.uniform(-0.03, 0.03, 2) * canvas
    c, f = ox - (a + b) * size / 2, oy - (d + e) * size / 2
    image = image.transform((size, size), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR, fillcolor=bg)
    # lighting and noise
    pixels = np.asarray(image, dtype=np.float32)
    gain = rng.uniform(0.85, 1.15) * (1 + rng.uniform(-0.04, 0.04, 3))
    ramp = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, size)[None, :, None]  # light from one side
    pixels = pixels * gain * ramp + rng.normal(0, rng.uniform(1, 5), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    return image


def generate_identity_dataset(
    root: str | Path,
    num_identities: int = 100,
    images_per_identity: int = 10,
    *,
    groups: tuple[GroupSpec, ...] = DEFAULT_GROUPS,
    group_column: str = "gender",
    size: int = 112,
    seed: int = 0,
    quality: int = 92,
) -> Path:
    """Cache a synthetic identity set and return the path of its ``labels.csv``.

    Writes ``<root>/<identity>/<k>.jpg`` and ``<root>/labels.csv`` with columns
    ``image, identity, <group_column>``. Identities are assigned to groups by ``fraction``
    (largest remainder). A folder already holding the same set is reused.
    """
    root = Path(root)
    meta = {
        "num_identities": num_identities,
        "images_per_identity": images_per_identity,
        "groups": [asdict(g) for g in groups],
        "group_column": group_column,
        "size": size,
        "seed": seed,
        "params": {k: list(v) for k, v in PARAMS.items()},
    }
    labels = root / "labels.csv"
    meta_file = root / "meta.json"
    if labels.is_file() and meta_file.is_file() and json.loads(meta_file.read_text()) == json.loads(json.dumps(meta)):
        return labels
    fractions = np.array([g.fraction for g in groups], dtype=float)
    exact = fractions / fractions.sum() * num_identities
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: num_identities - counts.sum()]:
        counts[i] += 1
    membership = [g for g, c in zip(groups, counts) for _ in range(c)]
    rows = []
    for ident, group in enumerate(membership):
        rng = np.random.default_rng([seed, ident])
        params = sample_identity(rng, group.spread)
        name = f"id{ident:05d}"
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(images_per_identity):
            image = render_identity_image(params, np.random.default_rng([seed, ident, k + 1]), size)
            image.save(root / name / f"{k:03d}.jpg", quality=quality)
            rows.append((f"{name}/{k:03d}.jpg", name, group.name))
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "identity", group_column])
        writer.writerows(rows)
    meta_file.write_text(json.dumps(meta, indent=1))
    return labels
