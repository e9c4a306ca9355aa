"""A FaceID model's embedding network (backbone + neck) to ONNX, and an ONNX Runtime session for it.

The graph: ``images`` (B, 3, H, W) float32 face crops normalised as the recognition data module
does (``(pixels / 255 - 0.5) / 0.5``, RGB) -> ``embeddings`` (B, D): :meth:`FaceID.forward
<facenas.models.recognition.FaceID.forward>`, before the L2 normalisation (and the flipped-image sum
of ``flip_test``) that :meth:`FaceID.embed <facenas.models.recognition.FaceID.embed>` adds;
:meth:`OnnxEmbedderSession.embed` adds them. Batch, height and width are dynamic (a backbone that
needs a fixed size still needs it). The margin head (training only) is not exported.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facenas.models.recognition import FaceID

from .detector import FORMAT_VERSION, HPARAMS_KEY, ort_session

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class _Embedding(nn.Module):
    def __init__(self, model: FaceID) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def embedder_hparams(model: FaceID, image_size: int) -> dict[str, Any]:
    """The metadata of an embedding export: input size and normalisation, embedding size, flip test."""
    h = model.hparams
    return {
        "facenas_export": FORMAT_VERSION,
        "task": "recognition",
        "backbone": str(h.backbone),
        "embedding_dim": int(h.embedding_dim) if h.get("embedding_dim") is not None else None,
        "image_size": int(image_size),
        "flip_test": bool(h.get("flip_test", False)),
        "mean": list(MEAN),
        "std": list(STD),
        "color": "RGB",
        "layout": "NCHW",
        "outputs": ["embeddings"],
    }


def export_embedder(model: FaceID, path: str | Path, *, image_size: int = 112, opset: int = 17) -> Path:
    """Write ``model``'s backbone + neck (its ``forward``) as ONNX with dynamic batch and image size,
    traced at ``image_size`` x ``image_size`` (the size it was trained at). Returns the path."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = copy.deepcopy(model).cpu().float().eval()
    module.hparams.channels_last = False
    for p in module.parameters():
        p.requires_grad_(False)
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _Embedding(module),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "embeddings": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = HPARAMS_KEY, json.dumps(embedder_hparams(model, image_size))
    proto.producer_name = "facenas"
    onnx.save(proto, str(path))
    return path


class OnnxEmbedderSession:
    """An exported FaceID embedding network in ONNX Runtime (CPU): ``sess(images)`` -> (B, D)
    embeddings as the model's ``forward`` gives them; :meth:`embed` as its ``embed`` does."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = ort_session(self.path, threads, "ONNX embedder")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.hparams: dict[str, Any] = json.loads(meta.get(HPARAMS_KEY, "{}"))
        if self.hparams.get("task") != "recognition":
            raise ValueError(f"{self.path}: not a facenas embedding export")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["embeddings"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (with the flipped images' added first when the model flip-tests)."""
        emb = self(images)
        if self.hparams.get("flip_test"):
            emb = emb + self(np.ascontiguousarray(images[..., ::-1]))
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
