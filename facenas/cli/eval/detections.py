"""``facenas eval detections``: AP@IoU of WIDER-format prediction files."""

from __future__ import annotations

import sys

from ..common import number, parse, print_json, table, tool_parser


def run(verb: str, argv: list[str]) -> int:
    from jsonargparse.typing import PositiveFloat

    parser = tool_parser(
        verb,
        "AP@IoU of WIDER-format predictions against ground truth, with MMDetection's VOC "
        "semantics (ignored boxes neither help nor hurt; all-point AP).",
    )
    parser.add_argument("--gt", type=str, required=True, help="ground-truth annotation file (or folder for voc/fddb)")
    parser.add_argument(
        "--gt_format", type=str, default="wider", help="format of --gt: wider, retinaface, fddb, voc, dlib, coco"
    )
    parser.add_argument(
        "--pred", type=str, required=True, help="prediction folder in WIDER format: <event>/<image stem>.txt"
    )
    parser.add_argument("--iou", type=PositiveFloat, default=0.5, help="IoU threshold of a true positive, in (0, 1]")
    parser.add_argument(
        "--min_size",
        type=float,
        default=0.0,
        help="ignore ground truths (and unmatched detections) with sqrt(w*h) below this; HyperFD: 36",
    )
    parser.add_argument(
        "--images", type=str | None, default=None, help="image folder: needed for --short_side (image sizes)"
    )
    parser.add_argument(
        "--short_side",
        type=PositiveFloat | None,
        default=None,
        help="measure sizes after scaling each image to this shorter side; HyperFD: 720",
    )
    parser.add_argument(
        "--attributes",
        type=str | None,
        default=None,
        help="per-face attribute CSV (file, face_index, columns...), e.g. WIDER demographics_val.csv",
    )
    parser.add_argument(
        "--attribute_columns",
        type=list[str] | None,
        default=None,
        help="attribute columns to report AP for (default: all of the CSV's label columns)",
    )
    parser.add_argument(
        "--split_file",
        type=str | None,
        default=None,
        help="score only the images a facenas split file assigns to --split (facenas predict writes "
        "the test split's predictions)",
    )
    parser.add_argument("--split", type=str, default="test", help="the split of --split_file: train, val or test")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parse(parser, argv)

    from facenas.callbacks.from_files import evaluate_detection_files

    found = evaluate_detection_files(
        args.gt,
        args.pred,
        gt_format=args.gt_format,
        images=args.images,
        iou=args.iou,
        min_size=args.min_size,
        short_side=args.short_side,
        attributes=args.attributes,
        attribute_columns=args.attribute_columns,
        split_file=args.split_file,
        split=args.split,
    )
    result = found.result
    for report in (found.report, found.predictions):
        if report.issues:
            print(report.summary(), file=sys.stderr)
    skipped = [i for i in found.predictions.issues if i.reason.endswith("prediction_file")]
    for issue in skipped[:20]:
        print(f"  {issue.reason} at {issue.where()}: {issue.detail}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"  ... {len(skipped) - 20} more skipped prediction files", file=sys.stderr)
    if result["skipped_images"]:
        print(
            f"facenas: {result['skipped_images']} images left out of the score: their prediction files were "
            "skipped (reasons above)",
            file=sys.stderr,
        )
    if found.missing:
        print(
            f"facenas: {len(found.missing)} of {result['num_images']} images have no prediction file (counted as no "
            f"detections), e.g. {found.missing[0]}",
            file=sys.stderr,
        )
    for col, groups in result.get("attributes", {}).items():
        for value, r in groups.items():
            if r["ap50"] is None:
                print(
                    f"facenas {verb}: no counted face has {col}={value}: its AP is undefined "
                    f"({'null' if args.json else 'n/a'})",
                    file=sys.stderr,
                )
    if args.json:
        print_json(result)
        return 0
    title = f"AP@{result['iou']:g} (min size {result['min_size']:g}" + (
        f", short side {result['short_side']:g})" if result["short_side"] else ")"
    )
    rows = [("all", number(result["ap50"]), number(result["recall"]), result["num_gt"], result["num_det"])]
    rows += [
        (f"{col}={value}", number(r["ap50"]), number(r["recall"]), r["num_gt"], r["num_det"])
        for col, groups in result.get("attributes", {}).items()
        for value, r in groups.items()
    ]
    table(title, ("subset", "AP", "recall", "faces", "detections"), rows)
    return 0
