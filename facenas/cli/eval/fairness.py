"""``facenas eval fairness``: FR-NAS identification error and fairness of saved embeddings."""

from __future__ import annotations

import sys
from typing import Literal

from ..common import number, parse, print_json, table, tool_parser


def run(verb: str, argv: list[str]) -> int:
    from jsonargparse.typing import ClosedUnitInterval

    parser = tool_parser(
        verb,
        "Identification error and FR-NAS fairness metrics (rank disparity and rank ratio by image "
        "and by identity, disparity, ratio, error ratio) of saved embeddings (facenas predict writes them for a "
        "FaceID model: embeddings/embeddings.npy + meta.csv).",
    )
    parser.add_argument(
        "--embeddings",
        type=str,
        required=True,
        help="array of shape (N, D), row i is image i: a .npy, an .npz holding one array, or FILE.npz:KEY for "
        "one array of several. Rows with a NaN or infinite value or all zeros are left out and counted",
    )
    parser.add_argument(
        "--meta",
        type=str,
        required=True,
        help="UTF-8 CSV with a header and one row per embedding row (same order); every row as many fields "
        "as the header, a non-empty identity; an empty group: no group",
    )
    parser.add_argument("--identity_column", type=str, default="identity", help="identity column of --meta")
    parser.add_argument(
        "--group_column",
        type=str,
        default="gender",
        help="demographic group column of --meta (gender, race, age_bin, ...)",
    )
    parser.add_argument(
        "--reference_group",
        type=str | None,
        default=None,
        help="compare every other group with this one (FR-NAS: female); default: maximum over all ordered pairs",
    )
    parser.add_argument(
        "--age_bins",
        action="store_true",
        help="bin a numeric group column into FR-NAS age bins (1-25, 26-50, 51-75, 76-110)",
    )
    parser.add_argument(
        "--singletons",
        type=Literal["skip", "error"],
        default="skip",
        help="images whose identity has no other image: skip them (default), or count them as "
        "errors with rank -1 (error: FR-NAS's code)",
    )
    parser.add_argument(
        "--max_bad_fraction",
        type=ClosedUnitInterval,
        default=0.05,
        help="leave out embedding rows with a NaN or infinite value or all zeros, up to this fraction of "
        "them; more is an error (exit 2)",
    )
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parse(parser, argv)

    from facenas.callbacks.from_files import evaluate_embedding_files

    result = evaluate_embedding_files(
        args.embeddings,
        args.meta,
        identity_column=args.identity_column,
        group_column=args.group_column,
        reference_group=args.reference_group,
        age_bins=args.age_bins,
        singletons=args.singletons,
        max_bad_fraction=args.max_bad_fraction,
        device=args.device,
        progress=True,
    )
    if result.excluded_rows:
        shown = ", ".join(str(i) for i in result.excluded_rows[:5]) + (", ..." if len(result.excluded_rows) > 5 else "")
        print(
            f"facenas {verb}: {len(result.excluded_rows)} embedding rows left out ({result.nonfinite_rows} with a "
            f"NaN or infinite value, {result.zero_rows} all zeros; 0-based rows {shown} of --embeddings and --meta)",
            file=sys.stderr,
        )
    for line in result.notes:
        print(f"facenas {verb}: {line}", file=sys.stderr)
    if result.all_undefined:
        from facenas.datamodules.records import DataError

        raise DataError(result.undefined[0], args.meta)
    for line in result.undefined:
        print(f"facenas {verb}: {line} ({'null' if args.json else 'n/a'})", file=sys.stderr)
    result = result.as_dict()
    if args.json:
        print_json(result)
        return 0
    from facenas.callbacks.fairness import FAIRNESS_METRICS

    metrics = ("error", "rank", "rank_by_identity", *FAIRNESS_METRICS)
    counted = "singletons counted as errors" if result["singleton_rule"] == "error" else "singletons skipped"
    table(
        f"identification over {result['probes']} probes",
        ("metric", "value"),
        [(k, number(result[k])) for k in metrics]
        + [(counted, str(result["singletons"]))]
        + [
            ("rows left out: NaN/inf", str(result["nonfinite_rows"])),
            ("rows left out: all zeros", str(result["zero_rows"])),
        ],
    )
    table(
        f"per {args.group_column}",
        ("group", "n", "accuracy", "error", "rank", "rank_by_identity"),
        [
            (
                g,
                s["n"],
                number(s["accuracy"]),
                number(s["error"]),
                number(s["rank"], 3),
                number(s["rank_by_identity"], 3),
            )
            for g, s in result["groups"].items()
        ],
    )
    return 0
