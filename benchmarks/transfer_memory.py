"""Peak memory of verification on an LFW-size pair set (12,000 images of 112 x 112): streamed (a
batch decoded and embedded at a time, ``facenas.callbacks.verification.pair_set_accuracy``) against the
previous way (every image decoded into one tensor, then embedded in batches).

    python benchmarks/transfer_memory.py [--images 12000] [--model faceid]

Each way runs in a fresh subprocess; the table gives its peak resident memory (``ru_maxrss``),
the baseline of the same subprocess after reading the pair set (imports, model, JPEG bytes), and
the wall time. ``--model toy`` embeds with per-channel statistics (the memory of decoding alone);
``faceid`` with an untrained ``dpn_search_small_301`` FaceID at 112 px.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_pair_set(path: Path, images: int) -> Path:
    import numpy as np
    from PIL import Image

    from facenas.datamodules.recognition.formats import write_verification_bin

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    blobs = []
    for i in range(images):
        noisy = (base.astype(np.int16) + rng.integers(-40, 40, base.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(np.roll(noisy, i % 112, axis=1)).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return write_verification_bin(path, blobs, [bool(i % 2) for i in range(images // 2)])


def measure(way: str, pair_set: str, model_name: str, batch_size: int) -> dict:
    import torch

    from facenas.callbacks.verification import pair_set_accuracy, verification_accuracy
    from facenas.datamodules.recognition.datamodule import eval_transform
    from facenas.datamodules.recognition.formats import read_verification_bin

    torch.set_num_threads(2)
    if model_name == "faceid":
        from facenas.models.recognition import FaceID

        model = FaceID(backbone="dpn_search_small_301", embedding_dim=128, num_classes=2).eval()
        embed = model.embed
    else:

        def embed(images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], 1))

    pairs = read_verification_bin(pair_set)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.inference_mode():
        if way == "streamed":
            accuracy, _ = pair_set_accuracy(embed, pairs, 112, batch_size)
        else:  # the previous VerificationAccuracy: decode the whole set, then embed in batches
            transform = eval_transform(112)
            images = torch.stack([transform(pairs.decode(i)) for i in range(len(pairs.images))])
            emb = torch.cat([embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
            accuracy, _ = verification_accuracy((emb[0::2] - emb[1::2]).norm(dim=1).numpy(), pairs.issame)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"way": way, "baseline_mb": before, "peak_mb": peak, "seconds": seconds, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--model", choices=["toy", "faceid"], default="toy")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args._measure[0], args._measure[1], args.model, args.batch_size)))
        return
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        pair_set = make_pair_set(Path(tmp) / "pairs.bin", args.images)
        size = pair_set.stat().st_size / 2**20
        rows = []
        for way in ("streamed", "decode-all"):
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--batch_size", str(args.batch_size), "--images",
                 str(args.images), "--_measure", way, str(pair_set)],
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            if out.returncode != 0:
                raise SystemExit(f"the {way} measurement failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.images} images of 112 x 112 ({size:.0f} MB of JPEG), model {args.model}, batch {args.batch_size}")
    print("| way | peak RSS (MB) | after reading the set (MB) | added by the evaluation (MB) | wall (s) | accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        added = r["peak_mb"] - r["baseline_mb"]
        print(
            f"| {r['way']} | {r['peak_mb']:.0f} | {r['baseline_mb']:.0f} | {added:.0f} | {r['seconds']:.1f} "
            f"| {r['accuracy']:.4f} |"
        )


if __name__ == "__main__":
    main()
