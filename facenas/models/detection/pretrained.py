"""Detectors shipped with facenas (half-precision state dicts, package data), and the export that
makes one from a training checkpoint.

Use a shipped detector by name as ``RetinaFace(weights=...)`` (``configs/detection/pretrained.yaml``
does), or give the path of your own exported file. Export::

    python -m facenas.models.detection.pretrained runs/<name>/version_<n>/checkpoints/best-<epoch>.ckpt out.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).with_name("weights")

# name -> (file in models/detection/weights, what it is)
SHIPPED = {
    "wider_subset_320": (
        "retinaface_mnv2_x05_wider_subset_320.pt",
        "RetinaFace MobileNetV2 x0.5 (channels 80), trained from scratch on the 1,239 WIDER FACE "
        "training images of ../shared/data at 320 px on a CPU; see benchmarks/RESULTS.md",
    ),
    "largest_wider_subset_320": (
        "retinaface_proxyless_x05_largest_wider_subset_320.pt",
        "RetinaFace with the largest network of HyperFD's NAS space (proxyless_x05:largest), started from "
        "wider_subset_320 remapped and trained 12 epochs on the same images at 320 px on a CPU: the seed "
        "of remap_from for sampled architectures; see benchmarks/RESULTS.md",
    ),
}


# name -> the RetinaFace arguments its weights fit (the rest are RetinaFace's defaults)
SHIPPED_ARCHITECTURES = {
    "wider_subset_320": {"backbone": "mobilenet_v2_0.5", "channels": 80},
    "largest_wider_subset_320": {"backbone": "proxyless_x05:largest", "channels": 80},
}


def resolve_weights(weights: str) -> Path:
    """A shipped detector's file by name, or a path to a file."""
    if weights in SHIPPED:
        path = WEIGHTS_DIR / SHIPPED[weights][0]
        if not path.is_file():
            raise FileNotFoundError(2, f"shipped detector {weights!r} is missing from the installation", str(path))
        return path
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            2, f"detector weights not found (shipped names: {', '.join(SHIPPED)}; or a file)", str(path)
        )
    return path


def load_detector_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The network tensors of a detector file and its hyper-parameters (empty for an exported
    file): an exported state dict, ``{"state_dict": ...}``, or a Lightning checkpoint (``net.``
    and ``module.`` prefixes removed). A file that is not one is a ValueError naming it."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a weights file"
        raise ValueError(f"{path}: not a detector weights file or checkpoint ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state dict")
    hparams = dict(obj.get("hyper_parameters") or {})
    state = obj.get("state_dict", obj)
    if any(k.startswith("net.") for k in state):  # a LightningModule's state: the network's tensors
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}, hparams


def export_weights(checkpoint: str | Path, out: str | Path) -> dict[str, int]:
    """Write a Lightning checkpoint's ``net.*`` tensors (the detector without its training state)
    as a half-precision state dict, the format ``RetinaFace(weights=...)`` loads. Integer
    buffers (BatchNorm's batch counts) keep their type. Returns tensor and byte counts."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    net = {
        k.removeprefix("net."): (v.half() if v.is_floating_point() else v)
        for k, v in state.items()
        if k.startswith("net.")
    }
    if not net:
        raise ValueError(f"{checkpoint}: no RetinaFace network tensors (net.*) in its state_dict")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net, out)
    return {"tensors": len(net), "bytes": Path(out).stat().st_size}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m facenas.models.detection.pretrained CHECKPOINT OUT.pt")
    print(export_weights(sys.argv[1], sys.argv[2]))
