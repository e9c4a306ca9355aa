"""``facenas eval transfer``: a trained identification model on other data (FR-NAS Table 2,
Tables 10-11): 10-fold verification accuracy on insightface pair sets, and identification error
and fairness on a labelled set grouped by another protected attribute (race, age bins)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from facenas.core.errors import UserError
from facenas.core.progress import counting, tick, track

from ..common import parse, print_json, table, tool_parser


def run(verb: str, argv: list[str]) -> int:
    parser = tool_parser(
        verb,
        "Evaluate a trained FaceID checkpoint on other data: 10-fold verification accuracy on insightface "
        "pair sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...; streamed, a batch of images at a time), and "
        "identification error and fairness on a labelled set by a protected attribute (each fairness metric "
        "the maximum over ordered pairs of groups, as FR-NAS reports transfer).",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="a FaceID checkpoint (facenas fit writes them)")
    parser.add_argument(
        "--sets", type=list[str], default=[], help="insightface .bin pair sets; each is named by its file name"
    )
    parser.add_argument(
        "--identification",
        type=str | None,
        default=None,
        help="labelled evaluation set: a CSV with image, identity and the attribute's column (RFW-style race, "
        "AgeDB-style age); image paths relative to the CSV's folder",
    )
    parser.add_argument(
        "--attribute",
        type=str,
        default="race",
        help="the protected attribute's column of --identification; a numeric age column is binned into "
        "FR-NAS's age bins (1-25, 26-50, 51-75, 76-110) with --attribute age_bin",
    )
    parser.add_argument(
        "--singletons",
        type=Literal["skip", "error"],
        default="skip",
        help="identities with one image: skip them (default) or count them as errors (FR-NAS's code)",
    )
    parser.add_argument("--image_size", type=int, default=112, help="side the images are resized to")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parse(parser, argv)
    if not args.sets and args.identification is None:
        raise UserError("nothing to evaluate: give --sets and/or --identification")

    import torch

    from facenas.callbacks.fairness import FAIRNESS_METRICS
    from facenas.callbacks.from_files import resolve_device
    from facenas.callbacks.verification import pair_set_accuracy
    from facenas.datamodules.recognition.formats import read_verification_bin
    from facenas.training.cli import check_checkpoint

    if not Path(args.ckpt_path).is_file():
        raise UserError(f"checkpoint not found: {args.ckpt_path}")
    check_checkpoint(args.ckpt_path)
    device = torch.device(resolve_device(args.device))
    model = load_faceid(args.ckpt_path, device)
    result: dict = {"checkpoint": args.ckpt_path, "verification": {}, "identification": None}

    def embed(images):
        tick()
        return model.embed(images)

    for path in args.sets:
        pairs = read_verification_bin(path)
        batches = -(-len(pairs.images) // args.batch_size)
        with torch.inference_mode(), counting(f"{Path(path).stem} ({len(pairs.images)} images)", batches):
            mean, std = pair_set_accuracy(embed, pairs, args.image_size, args.batch_size, device)
        result["verification"][Path(path).stem] = {"pairs": len(pairs), "accuracy": mean, "std": std}
    if args.identification is not None:
        result["identification"] = identification_fairness(
            model, args.identification, args.attribute, args.singletons, args.image_size, args.batch_size, device
        )
    if args.json:
        print_json(result)
        return 0
    if result["verification"]:
        table(
            "verification (10-fold)",
            ("set", "pairs", "accuracy"),
            [
                (k, v["pairs"], f"{100 * v['accuracy']:.2f} +- {100 * v['std']:.2f}")
                for k, v in result["verification"].items()
            ],
        )
    ident = result["identification"]
    if ident is not None:
        table(
            f"identification by {args.attribute} ({ident['probes']} probes; max over ordered group pairs)",
            ("metric", "value"),
            [(k, f"{ident[k]:.4f}") for k in ("error", *FAIRNESS_METRICS)],
        )
        table(
            f"per {args.attribute}",
            ("group", "n", "accuracy", "rank", "rank_by_identity"),
            [
                (g, s["n"], f"{s['accuracy']:.4f}", f"{s['rank']:.3f}", f"{s['rank_by_identity']:.3f}")
                for g, s in ident["groups"].items()
            ],
        )
    return 0


def load_faceid(ckpt: str, device):
    """The FaceID of a checkpoint, in evaluation mode on ``device``."""
    from facenas.models.recognition import FaceID

    try:
        return FaceID.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).to(device).eval()
    except (KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{ckpt} is not a FaceID checkpoint: {exc}") from None


def identification_fairness(
    model, csv_file: str, attribute: str, singletons: str, image_size: int, batch_size: int, device
) -> dict:
    """Identification error and fairness of ``model`` on every image of a labelled CSV, grouped by
    ``attribute``; each metric the maximum over ordered pairs of groups."""
    import torch
    from torch.utils.data import DataLoader

    from facenas.callbacks.fairness import evaluate_fairness
    from facenas.datamodules.recognition.datamodule import IdentityDataset, eval_transform
    from facenas.datamodules.recognition.formats import read_identities

    samples, report = read_identities("csv", csv_file)
    names = sorted({s.attributes.get(attribute) for s in samples} - {None})
    if not names:
        columns = sorted({k for s in samples for k in s.attributes})
        raise UserError(f"{csv_file}: no image has a value for the attribute {attribute!r} (columns: {columns})")
    identities = {name: i for i, name in enumerate(sorted({s.identity for s in samples}))}
    group_index = {g: i for i, g in enumerate(names)}
    groups = [group_index.get(s.attributes.get(attribute), -1) for s in samples]
    dataset = IdentityDataset(samples, eval_transform(image_size), {}, identities, groups, crop_margin=0.0)
    embeddings, ids, grp = [], [], []
    with torch.inference_mode():
        for batch in track(DataLoader(dataset, batch_size=batch_size), f"identification ({len(samples)} images)"):
            embeddings.append(model.embed(batch["images"].to(device)).float().cpu())
            ids.append(batch["identities"])
            grp.append(batch["groups"])
    result = evaluate_fairness(
        torch.cat(embeddings), torch.cat(ids), torch.cat(grp), names, reference_group=None, singletons=singletons
    )
    if report.issues:
        print(f"facenas eval transfer: {report.summary()}", file=sys.stderr)
    return result.as_dict()
