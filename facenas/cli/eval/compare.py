"""``facenas eval compare``: FR-NAS's comparison of bias-mitigation methods (Table 1, Table 8)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from ..common import parse, print_json, tool_parser


def run(verb: str, argv: list[str]) -> int:
    from facenas.callbacks.compare import METRICS

    parser = tool_parser(
        verb,
        "Compare trainings (model x bias-mitigation method, several seeds each) by (error; fairness metric) "
        "for FR-NAS's fairness metrics, mean +- std over seeds, with the Pareto-optimal entries marked: "
        "Markdown, CSV and a scatter plot per metric.",
    )
    parser.add_argument(
        "--runs",
        type=list[str],
        required=True,
        help="run folders (runs/<name>/version_N of the CSV logger; model and method from hparams.yaml) "
        "and/or YAML files listing {dir, model, method} entries under 'runs'",
    )
    parser.add_argument("--stage", type=Literal["test", "val"], default="test", help="which logged metrics to compare")
    parser.add_argument("--metrics", type=list[str], default=list(METRICS), help="fairness metrics to compare")
    parser.add_argument("--out", type=str | None, default=None, help="folder for comparison.md, .csv and PNGs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of Markdown")
    args = parse(parser, argv)

    from facenas.callbacks.compare import all_undefined, compare, markdown, plot, read_runs, undefined, write_csv
    from facenas.core.errors import UserError

    result = compare(read_runs(args.runs, args.stage), args.metrics)
    if all_undefined(result):
        raise UserError(f"every {args.stage} metric of every run is undefined (NaN): nothing to compare")
    for line in undefined(result):
        print(f"facenas {verb}: {line}", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(markdown(result))
        written = [out / "comparison.md", write_csv(result, out / "comparison.csv")]
        written += [plot(result, key, out / f"{key}.png") for key in result["metrics"]]
        if not args.json:
            print("written: " + ", ".join(str(p) for p in written))
    return 0
