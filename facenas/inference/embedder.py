"""FaceEmbedder: a trained FaceID model's embeddings of face crops, from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facenas.datamodules.recognition.datamodule import eval_transform
from facenas.models.recognition import FaceID

from .detector import _arguments, _pick_device, read_checkpoint
from .images import is_single, rgb_array


class FaceEmbedder:
    """Embeddings of face crops: ``FaceEmbedder.from_checkpoint(path).embed(images)`` -> (N, D)
    float32, each row L2-normalised (cosine similarity is a dot product).

    Input: crops of one face each, not aligned by landmarks: what the model was trained on, a
    face box with some margin (the recognition data module crops boxes with a 20 % margin on
    every side when the data has them, else takes the whole image). Each crop is resized to
    ``image_size`` x ``image_size`` and normalised to [-1, 1] by the recognition data module's
    evaluation transform (:func:`~facenas.datamodules.recognition.datamodule.eval_transform`),
    and embedded as :meth:`FaceID.embed <facenas.models.recognition.FaceID.embed>` does (with
    the mirrored crop's embedding added when the model has ``flip_test``): the rows ``facenas
    predict`` writes to ``embeddings.npy``.

    Args:
        model: a :class:`~facenas.models.recognition.FaceID`.
        image_size: the side the crops are resized to (the training data module's ``image_size``).
        batch_size: crops per forward pass.
        device: ``cpu``, ``cuda``, ...; default CUDA when there is one.
    """

    def __init__(
        self, model: FaceID, image_size: int = 112, *, batch_size: int = 64, device: str | torch.device | None = None
    ) -> None:
        if image_size < 1 or batch_size < 1:
            raise ValueError(f"image_size and batch_size must be >= 1, got {image_size} and {batch_size}")
        self.device = _pick_device(device)
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.transform = eval_transform(self.image_size)

    @property
    def dim(self) -> int:
        """The embedding size D."""
        return int(self.model.embedding_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, image_size: int | None = None, **kwargs: Any) -> FaceEmbedder:
        """The FaceID model of a ``facenas fit`` checkpoint; ``image_size`` defaults to the
        ``image_size`` of the data module saved in it (else 112)."""
        path = Path(path)
        checkpoint, hparams = read_checkpoint(path, "embedding_dim", "a FaceID checkpoint (no recognition")
        model = FaceID(**{**_arguments(FaceID, hparams), "pretrained": None})
        model.load_state_dict(checkpoint["state_dict"])
        if image_size is None:
            image_size = int((checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size", 112))
        return cls(model, image_size, **kwargs)

    @torch.inference_mode()
    def embed(self, images: Any, *, bgr: bool = False) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of a list of face crops ((1, D) for one crop):
        paths, PIL images or HxWx3 uint8 arrays (RGB; ``bgr=True`` for OpenCV's BGR)."""
        batch = [images] if is_single(images) else list(images)
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        crops = [
            self.transform(Image.fromarray(rgb_array(image, bgr=bgr, index=i if len(batch) > 1 else None)))
            for i, image in enumerate(batch)
        ]
        out = [
            self.model.embed(torch.stack(crops[start : start + self.batch_size]).to(self.device)).float().cpu()
            for start in range(0, len(crops), self.batch_size)
        ]
        return torch.cat(out).numpy()
