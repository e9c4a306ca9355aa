"""The images :class:`~facenas.inference.FaceDetector` and :class:`~facenas.inference.FaceEmbedder`
take: a path, a Pillow image or an 8-bit array, decoded exactly as the data modules decode files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facenas.datamodules.images import open_rgb, to_rgb

#: what one image may be (a list of them is a batch)
IMAGE_TYPES = "a path, a PIL image or an HxWx3 uint8 array"


def is_single(images: Any) -> bool:
    """Whether ``images`` is one image rather than a list or tuple of them."""
    return not isinstance(images, (list, tuple))


def rgb_array(image: Any, *, bgr: bool = False, index: int | None = None) -> np.ndarray:
    """One image as an HxWx3 uint8 RGB array.

    ``image`` is a path (decoded with Pillow, as every facenas data module decodes files), a PIL
    image (any mode, converted to RGB), or a uint8 NumPy array: HxWx3 in RGB order, or BGR with
    ``bgr=True`` (OpenCV's ``cv2.imread`` and video frames), or HxW grey. Arrays of another dtype
    are refused rather than guessed at: a float array may hold 0..1 or 0..255 values, and a
    network fed the wrong range finds fewer faces without saying so. ``bgr`` applies to arrays
    only: paths and PIL images know their own channel order.
    """
    where = f"image {index}" if index is not None else "image"
    if isinstance(image, (str, Path)):
        return np.array(open_rgb(image))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return np.array(to_rgb(image))
    if hasattr(image, "__array__") and not isinstance(image, np.ndarray):
        image = np.asarray(image)  # a torch tensor or another array type
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: a {type(image).__name__}; give {IMAGE_TYPES}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"{where}: a {image.dtype} array; give uint8 pixels 0..255 (e.g. (x * 255).round().astype(np.uint8) "
            "for 0..1 floats)"
        )
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{where}: an array of shape {image.shape}; give HxWx3 (RGB, or BGR with bgr=True) or HxW")
    return np.array(image[:, :, ::-1] if bgr else image)  # a copy: the caller's array stays theirs
