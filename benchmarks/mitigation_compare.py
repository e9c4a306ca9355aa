"""FR-NAS's comparison (Table 1) at CPU size: a usual backbone and a searched architecture, each
trained as a baseline and with each bias-mitigation method (Flipped, Angular, SensitiveNets on
the baseline's checkpoint as its frozen extractor), several seeds, then ``facenas eval compare``.

    python benchmarks/mitigation_compare.py --data synthetic --out runs/compare/synthetic
    python benchmarks/mitigation_compare.py --data celeba --out runs/compare/celeba

CelebA's images are cropped to the face the shipped detector finds (benchmarks/celeba_face_boxes.py,
run first when its CSV is missing): resized whole to 64 px, the resnet18 baseline stayed at
chance (test error 1.0 after 30 epochs).

Resumable: a training whose log folder already has ``test/error`` at the same epoch count is not
run again (a killed one, or one of another length, is started over). 30 epochs by default: at 12
the resnet18 baseline on synthetic identities was still at validation error 0.77, at 30 it
reaches 0.22. Every training is ``facenas fit`` of ``configs/recognition/quickstart.yaml`` with
the overrides below, its log folder ``<out>/<model>_<method>_s<seed>``. ``--finished_only``
trains nothing and compares the trainings that have finished so far.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "data" / "celeba_identities"
METHODS = ("baseline", "flipped", "angular", "sensitivenets")
# a usual backbone (timm, random initialisation: nothing is downloaded) and the architecture the
# FR-NAS quickstart search found Pareto-optimal (benchmarks/RESULTS.md, "Search quickstarts")
MODELS = ("resnet18", "dpn_search_small_706")

DATA = {
    # 60 synthetic identities x 10 images (6 train / 2 val / 2 test each), 48 px
    "synthetic": [
        "--data.init_args.synthetic_identities", "60", "--data.init_args.synthetic_size", "48",
        "--data.init_args.image_size", "48",
    ],
    # the CelebA subset as it is: 60 identities x 10 in-the-wild images, 30 female and 30 male,
    # each identity's images split 6:2:2, cropped to the face the shipped detector finds
    # (benchmarks/celeba_face_boxes.py; --celeba_boxes none: whole images) and resized to 64 px
    "celeba": [
        "--data.init_args.format", "csv", "--data.init_args.images", str(CELEBA / "img_celeba"),
        "--data.init_args.group_column", "gender_from_celeba_Male_attr", "--data.init_args.image_size", "64",
    ],
}  # fmt: skip


def celeba_annotations(boxes: str) -> Path:
    """The CelebA labels to train on: the face-box CSV (written by celeba_face_boxes.py when
    missing), or the subset's own labels.csv (whole images) for ``none``."""
    if boxes == "none":
        return CELEBA / "labels.csv"
    path = Path(boxes).resolve()
    if not path.is_file():
        script = REPO / "benchmarks" / "celeba_face_boxes.py"
        subprocess.run([sys.executable, str(script), "--out", str(path)], cwd=REPO, check=True)
    return path


def done(folder: Path, epochs: int) -> bool:
    """Whether the training in ``folder`` finished (tested) with ``epochs`` epochs."""
    metrics, config = folder / "metrics.csv", folder / "config.yaml"
    if not (metrics.is_file() and config.is_file()) or "test/error" not in metrics.read_text().splitlines()[0]:
        return False
    return yaml.safe_load(config.read_text())["trainer"]["max_epochs"] == epochs


def best_checkpoint(folder: Path) -> Path:
    found = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise FileNotFoundError(f"no best checkpoint in {folder}/checkpoints")
    return found[-1]


def train(out: Path, data: list[str], model: str, method: str, seed: int, epochs: int) -> Path:
    name = f"{model}_{method}_s{seed}"
    folder = out / name
    if done(folder, epochs):
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # a killed training starts over
    args = [
        sys.executable, "-m", "facenas", "fit", "--config", str(REPO / "configs/recognition/quickstart.yaml"),
        *data, "--seed_everything", str(seed), "--model.init_args.backbone", model,
        "--model.init_args.embedding_dim", "64", "--trainer.max_epochs", str(epochs),
        "--trainer.check_val_every_n_epoch", str(min(2, epochs)), "--data.init_args.num_workers", "0",
        "--data.init_args.synthetic_root", str(out.parent / "synthetic_identities"),
        "--data.init_args.split_file", str(out / f"split_seed{seed}.json"), "--data.init_args.seed", str(seed),
        "--trainer.logger.init_args.save_dir", str(out.parent), "--trainer.logger.init_args.name", out.name,
        "--trainer.logger.init_args.version", name, "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if method != "baseline":
        args += ["--config", str(REPO / f"configs/recognition/mitigation/{method}.yaml")]
    if method == "sensitivenets":  # on the same seed's baseline, frozen
        extractor = best_checkpoint(out / f"{model}_baseline_s{seed}")
        args += ["--model.init_args.mitigation_args.extractor", str(extractor)]
    start = time.time()
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0 or not done(folder, epochs):
        print(result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit {result.returncode})")
    print(f"{name}: {time.time() - start:.0f} s", flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS),
        help="of the grid (sensitivenets needs the baseline of the same model and seed)",
    )  # fmt: skip
    parser.add_argument("--identities", type=int, default=60, help="synthetic identities (--data synthetic)")
    parser.add_argument(
        "--finished_only", action="store_true",
        help="train nothing: compare the trainings of the grid that have finished (a partial table)",
    )  # fmt: skip
    parser.add_argument(
        "--celeba_boxes", default="runs/compare/celeba_faces.csv", help="face-box CSV for CelebA, or none"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = list(DATA[args.data])
    if args.data == "synthetic":
        data[data.index("--data.init_args.synthetic_identities") + 1] = str(args.identities)
    if args.data == "celeba":
        data += ["--data.init_args.annotations", str(celeba_annotations(args.celeba_boxes))]
    entries = []
    for seed in args.seeds:
        for model in args.models:
            for method in [m for m in METHODS if m in args.methods]:  # the baseline first: SensitiveNets uses it
                if args.finished_only:
                    folder = out / f"{model}_{method}_s{seed}"
                    if not done(folder, args.epochs):
                        print(f"{folder.name}: not finished, left out", flush=True)
                        continue
                else:
                    folder = train(out, data, model, method, seed, args.epochs)
                entries.append({"dir": folder.name, "model": model, "method": method})
    if not entries:
        raise SystemExit(f"no training of the grid has finished in {out}")
    listing = out / "runs.yaml"
    listing.write_text(yaml.safe_dump({"runs": entries}, sort_keys=False))
    subprocess.run(
        [sys.executable, "-m", "facenas", "eval", "compare", "--runs", f"[{listing}]", "--out", str(out / "compare")],
        cwd=REPO, check=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
