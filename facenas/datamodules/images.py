"""Image probing and the box hygiene every detection reader applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from facenas.core.progress import tick

from .records import DataReport, DetectionSample

VERIFY_MODES = ("none", "header", "full")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey PNGs open in one of these


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened Pillow image as 8-bit RGB: 16-bit grey is scaled to 8 bits (``convert("RGB")``
    would clip every value above 255 to white), every other mode converted by Pillow."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to 8-bit RGB (Pillow; torchvision's decoders are deprecated in
    favour of TorchCodec, which facenas does not need); see :func:`to_rgb`.

    Raises:
        OSError: the file is missing, unreadable, truncated, or declares more pixels than
            Pillow decodes safely (a decompression bomb).
    """
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise OSError(f"too large to decode: {exc}") from None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# containers `facenas predict` reads frame by frame (facenas.datamodules.video, PyAV)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file by its extension (:data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def image_files(path: str | Path) -> tuple[Path, list[Path]]:
    """The root that names are relative to and the images to predict on: a single image file
    (the root is its folder), or every image under a folder (recursively, sorted).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no image (the message
            names ``path`` as given).
        ValueError: ``path`` is a file that is not an image by its extension.
    """
    root = Path(path)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(
                f"{path}: not an image or video by its extension (images: {', '.join(IMAGE_EXTENSIONS)}; "
                f"videos: {', '.join(VIDEO_EXTENSIONS)})"
            )
        return root.parent, [root]
    if not root.is_dir():
        raise FileNotFoundError(2, "no such file or folder", str(path))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(2, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder", str(path))
    return root, files


def stem_clash(names: list[str]) -> tuple[str, str] | None:
    """The first two names (relative paths) that are equal once their extensions are removed
    (``x.jpg`` and ``x.png``), or None. WIDER's prediction files are named by the image's path
    without its extension, so two such images would write the same file."""
    seen: dict[str, str] = {}
    for name in names:
        key = Path(name).with_suffix("").as_posix()
        if key in seen:
            return seen[key], name
        seen[key] = name
    return None


def image_folder(folder: str | Path) -> list[DetectionSample]:
    """Every image under ``folder`` (recursively, sorted), or the one image ``folder`` names,
    as samples without faces named by their path relative to the folder: what
    ``facenas predict`` detects faces in (see :func:`image_files`)."""
    root, files = image_files(folder)
    return [
        DetectionSample(image=str(p), name=p.relative_to(root).as_posix(), boxes=np.zeros((0, 4)), ignore=[])
        for p in files
    ]


def probe_image(path: str | Path, verify: str = "header") -> tuple[int, int] | None:
    """Return ``(width, height)`` of an image, or None when ``verify == "none"``.

    ``"header"`` reads only the header (fast: catches missing and non-image files);
    ``"full"`` decodes every pixel (also catches truncated files).

    Raises:
        OSError: the file is missing, not an image, declares more pixels than Pillow decodes
            safely (``Image.MAX_IMAGE_PIXELS``, a decompression bomb), or (with ``"full"``)
            truncated.
    """
    if verify == "none":
        return None
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    try:
        with Image.open(path) as img:
            if verify == "full":
                img.load()
            return img.size
    except UnidentifiedImageError as exc:
        raise OSError(f"not a readable image: {exc}") from exc
    except SyntaxError as exc:  # PIL raises SyntaxError for some malformed headers
        raise OSError(f"malformed image: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise OSError(f"too large to decode: {exc}") from exc


def verify_sample_image(
    sample: DetectionSample, verify: str, report: DataReport, file: str | Path, line: int | None
) -> bool:
    """Probe ``sample.image``, fill its size, and report it when unreadable. Returns False to skip it."""
    tick()
    try:
        size = probe_image(sample.image, verify)
    except OSError as exc:
        report.add(file, line, "unreadable_image", f"{sample.image}: {exc}")
        return False
    if size is not None:
        sample.width, sample.height = size
    return True


def sanitize_boxes(sample: DetectionSample, report: DataReport, file: str | Path) -> DetectionSample:
    """Drop boxes with NaN, zero or negative size (or wholly outside the image); clip the rest to
    the image when its size is known. Every drop and clip is reported with its source line."""
    boxes = sample.boxes
    lines = sample.lines if sample.lines is not None else np.full(len(boxes), -1)

    def line_of(i: int) -> int | None:
        return int(lines[i]) if lines[i] >= 0 else None

    finite = np.isfinite(boxes).all(axis=1)
    wh = boxes[:, 2:] - boxes[:, :2]
    positive = finite & (wh > 0).all(axis=1)
    for i in np.flatnonzero(~finite):
        report.add(file, line_of(i), "nan_box", f"{sample.name}: {boxes[i].tolist()}")
    for i in np.flatnonzero(finite & ~positive):
        report.add(file, line_of(i), "empty_box", f"{sample.name}: w={wh[i, 0]:g} h={wh[i, 1]:g}")
    keep = positive
    if sample.width is not None and sample.height is not None:
        limit = np.array([sample.width, sample.height, sample.width, sample.height], dtype=np.float32)
        clipped = np.clip(boxes, 0, limit)
        inside = keep & ((clipped[:, 2:] - clipped[:, :2]) > 0).all(axis=1)
        for i in np.flatnonzero(keep & ~inside):
            report.add(
                file,
                line_of(i),
                "outside_image",
                f"{sample.name}: {boxes[i].tolist()} in {sample.width}x{sample.height}",
            )
        changed = inside & (clipped != boxes).any(axis=1)
        for i in np.flatnonzero(changed):
            report.add(file, line_of(i), "clipped", f"{sample.name}: {boxes[i].tolist()}", bad=False)
        sample.boxes = np.where(inside[:, None], clipped, boxes).astype(np.float32)
        keep = inside
    report.boxes_read += len(boxes)
    return sample if keep.all() else sample.select(keep)
