"""``facenas export``: a trained detector to ONNX or TorchScript (with or without its decode + NMS
post-processing), or a FaceID model's embedding network to ONNX, built through the same
LightningCLI configuration as ``facenas fit``."""

from __future__ import annotations

from typing import Literal

from facenas.core.errors import UserError

SUMMARY = (
    "Write the configured model as an ONNX file (opset >= 17; run it with ONNX Runtime or "
    "facenas.FaceDetector.from_onnx) or a TorchScript file, with dynamic batch and image size. A detector "
    "exports its raw outputs (scores, box and landmark offsets) or, with --postprocess, its detections after "
    "decoding and NMS; a FaceID model exports its embedding network (backbone + neck). The written file is "
    "run once against PyTorch on a sample input before the command ends."
)


def _arguments(parser) -> None:
    parser.add_argument("--out", type=str | None, default=None, help="the file to write (.onnx, .pt); required")
    parser.add_argument(
        "--format", type=Literal["onnx", "torchscript"], default="onnx", help="onnx or torchscript (detectors only)"
    )
    parser.add_argument(
        "--postprocess",
        action="store_true",
        help="end the detector's graph in anchor decoding + NMS (ONNX NonMaxSuppression): outputs image, boxes, "
        "scores, landmarks",
    )
    parser.add_argument(
        "--pixels",
        action="store_true",
        help="the detector's graph takes pixels, (B, H, W, 3) uint8 RGB, and normalises them itself (exactly as "
        "facenas does; faster in ONNX Runtime) instead of normalised (B, 3, H, W) float32 images",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        default=None,
        help="checkpoint of the trained model (runs/.../best-*.ckpt); a detector may instead name its weights "
        "in the config (model.init_args.weights)",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=112,
        help="FaceID: the square crop size the embedding network is traced at (its training size)",
    )


def run(verb: str, argv: list[str]) -> int:
    from pathlib import Path

    from .train import config_cli

    cli = config_cli(verb, argv, SUMMARY, _arguments)
    if cli is None:
        return 0

    from facenas.models.detection import RetinaFace
    from facenas.models.recognition import FaceID
    from facenas.training.cli import check_checkpoint

    cfg = cli.config
    model = cli.model
    if not isinstance(model, RetinaFace | FaceID):
        raise UserError(f"{type(model).__name__}: facenas export writes RetinaFace detectors and FaceID models")
    if cfg.out is None:
        raise UserError("give --out: the file to write")
    out = Path(cfg.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    if cfg.opset < 17:
        raise UserError(f"--opset {cfg.opset}: 17 or newer")
    detector = isinstance(model, RetinaFace)
    if not detector and cfg.format != "onnx":
        raise UserError("--format torchscript is for detectors; a FaceID model exports to onnx")
    if not detector and (cfg.postprocess or cfg.pixels):
        flag = "--postprocess" if cfg.postprocess else "--pixels"
        raise UserError(f"{flag} is for detectors (a FaceID export takes normalised crops, ends in embeddings)")
    if cfg.image_size < 16:
        raise UserError(f"--image_size {cfg.image_size}: at least 16")
    if cfg.ckpt_path is not None:
        if not Path(cfg.ckpt_path).is_file():
            raise UserError(f"checkpoint not found: {cfg.ckpt_path}")
        check_checkpoint(cfg.ckpt_path)
        model = type(model).load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=False)
    elif not cfg.get("allow_random_weights") and not any(
        model.hparams.get(k) is not None for k in ("weights", "pretrained", "remap_from")
    ):  # the rule of facenas predict: never an untrained model unless asked for
        raise UserError(
            "the model has no trained weights: give --ckpt_path FILE (or the model's weights or pretrained argument); "
            "--allow_random_weights true exports untrained weights"
        )
    model = model.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    if detector:
        from facenas.export import export_detector

        export_detector(model, out, format=cfg.format, postprocess=cfg.postprocess, pixels=cfg.pixels, opset=cfg.opset)
        check = _check_detector(model, out, cfg.format, cfg.postprocess, cfg.pixels)
        what = "detections (decode + NMS)" if cfg.postprocess else "raw scores, box and landmark offsets"
    else:
        from facenas.export import export_embedder

        export_embedder(model, out, image_size=cfg.image_size, opset=cfg.opset)
        check = _check_embedder(model, out, cfg.image_size)
        what = "embeddings"
    size = out.stat().st_size / 2**20
    runtime = "ONNX Runtime" if cfg.format == "onnx" else "TorchScript"
    print(f"wrote {out} ({cfg.format}, {what}, {size:.1f} MiB); {runtime} vs PyTorch {check}")
    return 0


def _check_detector(model, path, format: str, postprocess: bool, pixels: bool) -> str:
    """Run the written file once on a synthetic 320 x 240 photo against PyTorch: the largest
    difference of the raw outputs, or the detections of a post-processed graph (count, largest
    score difference)."""
    import numpy as np
    import torch

    from facenas.datamodules.detection import synthesize_detection_image
    from facenas.datamodules.detection.transforms import normalize

    photo, _, _ = synthesize_detection_image(0, size=(320, 240))
    rgb = torch.from_numpy(np.asarray(photo.convert("RGB")).copy())[None]
    images = normalize(rgb[0].permute(2, 0, 1))[None]
    given = rgb if pixels else images
    with torch.no_grad():
        if format == "onnx":
            from facenas.export import OnnxDetectorSession

            outputs = OnnxDetectorSession(path, threads=1)(given.numpy())
        else:
            from facenas.export import load_torchscript

            outputs = [o.numpy() for o in load_torchscript(path)[0](given)]
        if postprocess:
            expected = model.detect(images)[0]["scores"].numpy()
            got = np.sort(outputs[2])[::-1]
            if len(got) != len(expected):
                return f"on a synthetic photo: {len(got)} detections, PyTorch {len(expected)}"
            diff = float(np.abs(got - np.sort(expected)[::-1]).max()) if len(got) else 0.0
            return f"on a synthetic photo: {len(got)} detections as PyTorch's, scores within {diff:.1e}"
        expected = model(images)
    diff = max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected))
    return f"on a synthetic photo: largest difference {diff:.1e}"


def _check_embedder(model, path, image_size: int) -> str:
    import numpy as np
    import torch

    from facenas.export import OnnxEmbedderSession

    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).numpy()
    got = OnnxEmbedderSession(path, threads=1)(images.numpy())
    return f"on random crops: largest difference {float(np.abs(got - expected).max()):.1e}"
