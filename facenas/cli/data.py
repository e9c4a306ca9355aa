"""``facenas data check`` and ``facenas data synth``."""

from __future__ import annotations

from typing import Literal

from .common import parse, print_json, tool_parser


def check(verb: str, argv: list[str]) -> int:
    from jsonargparse.typing import ClosedUnitInterval

    from facenas.datamodules.check import check_dataset, dataset_formats

    parser = tool_parser(
        verb,
        "Read a dataset the way training reads it, decode every image, and report each box or "
        "image that is dropped (NaN, empty, outside, unreadable) or repaired (clipped).",
    )
    parser.add_argument("--format", type=str, required=True, help=f"dataset format: {', '.join(dataset_formats())}")
    parser.add_argument(
        "--annotations",
        type=str | None,
        default=None,
        help="annotation file or folder (identity formats: folders: attribute CSV, optional; celeba: "
        "identity_CelebA.txt; vggface2: identity_meta.csv; csv: the CSV)",
    )
    parser.add_argument("--images", type=str | None, default=None, help="image folder")
    parser.add_argument(
        "--max_bad_fraction",
        type=ClosedUnitInterval,
        default=0.01,
        help="exit 1 when more than this fraction of boxes and images is dropped",
    )
    parser.add_argument(
        "--verify",
        type=Literal["full", "header", "none"],
        default="full",
        help="image check: full (decode every image), header, none",
    )
    parser.add_argument("--list", type=int, default=20, help="how many individual issues to print")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    args = parse(parser, argv)

    kept, report = check_dataset(args.format, args.annotations, args.images, verify=args.verify)
    failed = report.bad_fraction > args.max_bad_fraction
    if args.json:
        print_json(
            {
                **kept,
                "images_read": report.images_read,
                "boxes_read": report.boxes_read,
                "dropped": report.num_bad,
                "bad_fraction": report.bad_fraction,
                "counts": dict(report.counts()),
                "ok": not failed,
                "issues": [vars(i) for i in report.issues],
            }
        )
        return 1 if failed else 0
    print(report.summary())
    for issue in report.issues[: args.list]:
        print(f"  {'dropped' if issue.bad else 'repaired'} {issue.reason} at {issue.where()}: {issue.detail}")
    if len(report.issues) > args.list:
        print(f"  ... {len(report.issues) - args.list} more (--list N or --json for all)")
    print(f"kept: {', '.join(f'{v} {k}' for k, v in kept.items())}")
    print(
        f"{'FAIL' if failed else 'OK'}: {100 * report.bad_fraction:.2f}% dropped "
        f"(limit {100 * args.max_bad_fraction:.2f}%)"
    )
    return 1 if failed else 0


def synth(verb: str, argv: list[str]) -> int:
    from jsonargparse.typing import PositiveInt

    parser = tool_parser(
        verb,
        "Write a seeded synthetic data set in the real formats, so that every reader, model and "
        "quickstart runs without downloads. detection: images/ + wider_face_bbx_gt.txt + label.txt "
        "(5 landmarks); identities: one folder per identity + labels.csv (image, identity, gender).",
    )
    parser.add_argument(
        "--task", type=Literal["detection", "identities"], default="detection", help="detection or identities"
    )
    parser.add_argument(
        "--out", type=str, required=True, help="output folder (reused when it already holds the same set)"
    )
    parser.add_argument("--images", type=PositiveInt, default=100, help="detection: number of images")
    parser.add_argument(
        "--domains",
        type=list[str],
        default=["plain"],
        help="detection: domain styles, round-robin: plain, crowd, masked, lowlight, fisheye, cartoon",
    )
    parser.add_argument("--width", type=PositiveInt, default=640, help="detection: image width")
    parser.add_argument("--height", type=PositiveInt, default=480, help="detection: image height")
    parser.add_argument("--identities", type=PositiveInt, default=100, help="identities: number of identities")
    parser.add_argument("--per_identity", type=PositiveInt, default=10, help="identities: images per identity")
    parser.add_argument("--size", type=PositiveInt, default=112, help="identities: image side")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same pixels")
    args = parse(parser, argv)
    if args.task == "detection":
        from facenas.core.errors import UserError
        from facenas.datamodules.detection.synthetic import DOMAINS, generate_detection_dataset

        unknown = [d for d in args.domains if d not in DOMAINS]
        if unknown:
            raise UserError(f"unknown domain {unknown[0]!r}; choose from {', '.join(DOMAINS)}")
        root = generate_detection_dataset(
            args.out, args.images, domains=args.domains, size=(args.width, args.height), seed=args.seed
        )
        print(f"wrote {args.images} images to {root}/images with {root}/wider_face_bbx_gt.txt and {root}/label.txt")
    else:
        from facenas.datamodules.recognition.synthetic import generate_identity_dataset

        labels = generate_identity_dataset(args.out, args.identities, args.per_identity, size=args.size, seed=args.seed)
        print(f"wrote {args.identities} identities x {args.per_identity} images; labels in {labels}")
    return 0
