"""How much of a detector's AP@50 and per-group AP gap is sampling noise of the validation set.

Re-evaluates trained detectors (their log folders: ``config.yaml`` + ``checkpoints/last.ckpt``,
e.g. the trials of ``configs/search/detection_fairness.yaml``) on their validation set with the
very metric the run logged (its ``facenas.callbacks.DetectionAP``), then bootstraps over validation
images: every replicate resamples the images with replacement, the same resample for every
detector, so differences between detectors are paired.

    python benchmarks/detection_gap_bootstrap.py runs/search/detection_fairness/trial_00{00,01,03}/logs

Prints per detector AP@50, each group's AP, the gap (``ap50_disparity_<attribute>``) and the
signed difference of the first two groups, with 95 % percentile intervals; then per pair of
detectors the paired intervals of the difference in AP@50 and in gap: a difference whose interval
contains 0 is not resolved by this validation set. Matching is per image, so each image's
counted detections are matched once; a replicate repeats each image's detections by its number
of copies.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facenas.callbacks import DetectionAP  # noqa: E402
from facenas.callbacks.detection_ap import average_precision  # noqa: E402
from facenas.callbacks.metrics import ap_disparity  # noqa: E402
from facenas.training import FaceNASCLI  # noqa: E402


@dataclass
class Matched:
    """One metric key's counted detections over the validation set, image after image: scores,
    TP flags and image index per detection, and each image's number of counted faces."""

    scores: torch.Tensor
    tp: torch.Tensor
    image: torch.Tensor
    faces: torch.Tensor

    def ap(self, counts: torch.Tensor) -> tuple[float, int]:
        """AP@50 and counted faces of a resample given as each image's number of copies: an image
        drawn k times contributes its detections and faces k times (no Python loop over images)."""
        copies = counts[self.image]
        num_gt = int((counts * self.faces).sum())
        scores, tp = self.scores.repeat_interleave(copies), self.tp.repeat_interleave(copies)
        return average_precision(scores, tp, num_gt)[0], num_gt


def per_image_matches(folder: Path, checkpoint: str) -> tuple[dict[str, Matched], int, float]:
    """Per metric key (``""``: all faces, ``"<attr>=<value>"``: a group) its :class:`Matched`;
    the metric's minimum faces per group; AP@50 of the whole set as the metric computes it."""
    cli = FaceNASCLI(["--config", str(folder / "config.yaml")], run=False, save_config_callback=None)
    callback = next((c for c in cli.trainer.callbacks if isinstance(c, DetectionAP)), None)
    if callback is None or not callback.attributes:
        raise SystemExit(f"{folder}/config.yaml has no DetectionAP callback with attributes")
    found = sorted((folder / "checkpoints").glob("best-*.ckpt" if checkpoint == "best" else "last.ckpt"))
    if not found:
        raise SystemExit(f"no {checkpoint} checkpoint in {folder}/checkpoints")
    model = type(cli.model).load_from_checkpoint(found[-1], map_location="cpu", weights_only=False).eval()
    data = cli.datamodule
    data.setup("validate")
    metric = callback._make_metric()
    keys = [""] + [f"{k}={v}" for k, v in metric.groups]
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]] = {key: [] for key in keys}
    with torch.inference_mode():
        for batch in data.val_dataloader():
            evaluated = model._evaluate(batch)
            for pred, target in zip(evaluated["preds"], evaluated["targets"]):
                before = {key: int(getattr(metric, f"num_gt{key}")) for key in keys}
                metric.update([pred], [target])  # one image: the logged metric's own matching
                for key in keys:
                    scores, tp = getattr(metric, f"scores{key}")[-1], getattr(metric, f"tp{key}")[-1]
                    parts[key].append((scores, tp.bool(), int(getattr(metric, f"num_gt{key}")) - before[key]))
    out = {
        key: Matched(
            scores=torch.cat([s for s, _, _ in images]),
            tp=torch.cat([t for _, t, _ in images]),
            image=torch.repeat_interleave(torch.arange(len(images)), torch.tensor([len(s) for s, _, _ in images])),
            faces=torch.tensor([f for _, _, f in images]),
        )
        for key, images in parts.items()
    }
    whole = float(metric.compute()["ap50"])
    print(f"{folder} ({found[-1].name}): {len(parts[''])} images, AP@50 {whole:.4f}", flush=True)
    return out, callback.min_group_faces, whole


def statistics(matches: dict[str, Matched], counts: torch.Tensor, min_faces: int) -> dict[str, float]:
    """AP@50, each group's AP and the gap between the usable groups on the resample ``counts``
    (each image's number of copies)."""
    out = {"ap50": matches[""].ap(counts)[0]}
    groups = {key: matched.ap(counts) for key, matched in matches.items() if key}
    out.update({key: ap for key, (ap, _) in groups.items()})
    out["gap"] = ap_disparity(list(groups.values()), min_faces)  # the metric's own rule
    # signed (first group minus second): the gap, an absolute value, is above 0 in every
    # replicate even when the groups do not differ; the sign says whether they do
    keys = list(groups)
    out["signed"] = out[keys[0]] - out[keys[1]] if len(keys) >= 2 else float("nan")
    return out


def interval(values: np.ndarray) -> str:
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return f"[{low:+.4f}, {high:+.4f}]" if low < 0 else f"[{low:.4f}, {high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="log folders (config.yaml + checkpoints/)")
    parser.add_argument(
        "--checkpoint", choices=("last", "best"), default="last",
        help="last: the epoch a search trial reports; best: the best validation epoch",
    )  # fmt: skip
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    runs = {str(folder): per_image_matches(folder, args.checkpoint) for folder in args.folders}
    sizes = {len(m[""].faces) for m, _, _ in runs.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the detectors were validated on different image counts: {sorted(sizes)}")
    n = sizes.pop()
    rng = np.random.default_rng(args.seed)
    resamples = [torch.bincount(torch.from_numpy(rng.integers(0, n, n)), minlength=n) for _ in range(args.replicates)]
    full = torch.ones(n, dtype=torch.long)
    point = {name: statistics(m, full, k) for name, (m, k, _) in runs.items()}
    for name, (_, _, whole) in runs.items():  # the per-image decomposition loses nothing
        if abs(point[name]["ap50"] - whole) > 1e-6:  # the metric returns float32
            raise SystemExit(f"{name}: AP@50 {point[name]['ap50']} from per-image matches, {whole} from the metric")
    boot = {}
    for name, (m, k, _) in runs.items():
        replicates = [statistics(m, i, k) for i in resamples]
        boot[name] = {key: np.array([r[key] for r in replicates]) for key in replicates[0]}
    faces = {key: int(m.faces.sum()) for key, m in next(iter(runs.values()))[0].items()}
    print(f"\n{n} validation images, counted faces: " + ", ".join(f"{k or 'all'} {v}" for k, v in faces.items()))
    print(f"{args.replicates} bootstrap replicates over images (seed {args.seed}), 95 % percentile intervals\n")
    groups = [key for key in next(iter(point.values())) if "=" in key]
    signed = f"{groups[0]} - {groups[1]}" if len(groups) >= 2 else "signed"
    print("| detector | AP@50 | " + " | ".join(groups) + f" | gap | {signed} |")
    print("|---|---|" + "---|" * len(groups) + "---|---|")
    for name in runs:
        cells = [f"{point[name][key]:.4f} {interval(boot[name][key])}" for key in ["ap50", *groups, "gap", "signed"]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if len(runs) > 1:
        print("\npaired differences (first minus second), 95 % intervals\n")
        print("| first | second | AP@50 difference | gap difference |")
        print("|---|---|---|---|")
        for a, b in itertools.combinations(runs, 2):
            cells = [
                f"{point[a][key] - point[b][key]:+.4f} {interval(boot[a][key] - boot[b][key])}"
                for key in ("ap50", "gap")
            ]
            print(f"| {a} | {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
