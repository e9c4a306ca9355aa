"""Apply the selection rule of a ``facenas hyperfd evaluate`` selection config to its two offline
protocols' results: the reading of each method (HyperFD; this project's portfolio) with the
lowest mean normalized rank over both protocols becomes that method's default, unless its
difference from the first-listed reading (the paper's, or the method's own default) is not
resolved, the 95 % interval of the paired bootstrap containing 0: then the first-listed stays.

    python benchmarks/hyperfd/select_reading.py configs/hyperfd/evaluate/real_photo_selection.yaml \\
        benchmarks/hyperfd/real_photo/selection_lodo benchmarks/hyperfd/real_photo/selection_halves \\
        --out benchmarks/hyperfd/real_photo/selection.md

Both protocols' cells (run x split x online dataset) are pooled; each resample draws the runs and
the cells with replacement, the same draw for every reading (:func:`facenas.hyperfd.online.bootstrap`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

from facenas.hyperfd.methods import method_specs
from facenas.hyperfd.online import bootstrap


def pooled_rows(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        with open(folder / "runs.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows.append(
                    {
                        "method": r["method"],
                        "run": int(r["run"]),
                        "dataset": f"{folder.name}:{r['dataset']}",
                        "rank": float(r["rank"]),
                    }
                )
    return rows


def select(config: Path, folders: list[Path], samples: int, seed: int) -> str:
    settings = yaml.safe_load(config.read_text())
    specs = method_specs(settings["methods"])
    rows = pooled_rows(folders)
    found = bootstrap(rows, {"all": sorted({r["dataset"] for r in rows})}, samples, seed)["all"]
    lines = [
        f"# Selection by {config} on {', '.join(str(f) for f in folders)}",
        "",
        f"{len(found['datasets'])} cells (split x online dataset) over {len({r['run'] for r in rows})} runs, "
        f"{samples} paired resamples of runs and cells.",
        "",
        "| reading | method | mean normalized rank (%) | 95 % interval |",
        "|---|---|---:|---|",
    ]
    for name, m in found["methods"].items():
        lines.append(f"| {name} | {specs[name][0]} | {m['mean']:.2f} | {m['lo']:.2f} to {m['hi']:.2f} |")
    lines.append("")
    for method in dict.fromkeys(m for m, _ in specs.values()):
        readings = [n for n, (m, _) in specs.items() if m == method and n in found["methods"]]
        if len(readings) < 2:
            continue
        first = readings[0]
        best = min(readings, key=lambda n: found["methods"][n]["mean"])
        if best == first:
            lines.append(f"- {method}: {first} ranks best of {', '.join(readings)}; it stays the default.")
            continue
        d = found["differences"][f"{best}|{first}"]
        resolved = d["hi"] < 0
        verdict = "it becomes the default" if resolved else f"not resolved, so {first} stays the default"
        lines.append(
            f"- {method}: {best} ranks best ({best} - {first}: {d['mean']:+.2f}, 95 % interval "
            f"{d['lo']:+.2f} to {d['hi']:+.2f}); {verdict}. Options of {best}: {specs[best][1] or 'the defaults'}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the selection config (its methods list the readings)")
    parser.add_argument("folders", type=Path, nargs="+", help="evaluation folders holding runs.csv")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the decision here (Markdown)")
    args = parser.parse_args()
    text = select(args.config, args.folders, args.samples, args.seed)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
