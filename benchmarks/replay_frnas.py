"""Replay search backends on the FR-NAS study's published results (real, tabular).

Each backend searches the ``frnas_phase1`` space (29 backbones x 3 heads x {SGD, AdamW} x
{default, cosine}); each evaluation looks up Error and Rank Disparity (both minimised) in
``analysis_vgg_val_phase1.csv``. Reported: hypervolume of the (Error, Rank Disparity) points
found after 25, 50 and 100 evaluations, mean and std over 10 seeds. Reference point: Error 1.0
(a diverged model) and the table's worst finite Rank Disparity (13.677), so every trained,
non-diverged configuration counts; the best reachable hypervolume is printed for scale.

    python benchmarks/replay_frnas.py [--seeds 10] [--trials 100] [--table PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facenas.core.pareto import hypervolume, hypervolume_history
from facenas.search.replay import OBJECTIVES, FRNASTable
from facenas.search.study import Study, StudySettings
from facenas.search.trial import Objective, Status

BACKENDS = {
    "random": "random",
    "SMAC (ParEGO)": {"class_path": "smac", "init_args": {"facade": "hpo"}},
    "Optuna NSGA-II": {"class_path": "optuna", "init_args": {"sampler": "nsga2", "population_size": 20}},
    "Optuna MOTPE": {"class_path": "optuna", "init_args": {"sampler": "motpe", "n_startup_trials": 10}},
}
DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "frnas" / "analysis_vgg_val_phase1.csv"


def replay(backend, table: FRNASTable, seed: int, trials: int, reference: list[float], workdir: Path) -> list[float]:
    settings = StudySettings(
        name=f"replay-{seed}",
        space="frnas_phase1",
        objectives=[Objective(**o) for o in OBJECTIVES],
        backend=backend,
        n_trials=trials,
        seed=seed,
        storage=":memory:",
        runs_dir=str(workdir),
        report=False,
    )
    store = Study(settings, objective=table, quiet=True).run()
    costs = np.array(
        [
            [t.result.values.get("Error", np.inf), t.result.values.get("Rank Disparity", np.inf)]
            if t.status == Status.SUCCESS
            else [np.inf, np.inf]
            for t in store.trials()
        ],
        dtype=float,
    )
    store.close()
    return hypervolume_history(costs, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--table", default=str(DEFAULT_TABLE))
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    args = parser.parse_args()
    table = FRNASTable(args.table)
    reference = [1.0, table.worst_rank_disparity()]
    everything = np.array([[v["Error"], v["Rank Disparity"]] for v in table.rows.values()], dtype=float)
    best = hypervolume(everything, reference)
    checkpoints = [k for k in (25, 50, 100) if k <= args.trials]
    print(
        f"{len(table.rows)} reachable configurations; reference point {reference}; "
        f"best reachable hypervolume {best:.4f}"
    )
    print()
    print("| backend | " + " | ".join(f"HV after {k}" for k in checkpoints) + " | seconds |")
    print("|---|" + "---|" * (len(checkpoints) + 1))
    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends:
            start = time.perf_counter()
            histories = [
                replay(BACKENDS[name], table, seed, args.trials, reference, Path(tmp) / f"{name}-{seed}")
                for seed in range(args.seeds)
            ]
            cells = []
            for k in checkpoints:
                values = [h[k - 1] for h in histories]
                cells.append(f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}")
            print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.1f} |", flush=True)
    print(
        f"\ntotal {time.perf_counter() - total:.1f} s for {len(args.backends)} backends x {args.seeds} seeds "
        f"x {args.trials} evaluations"
    )


if __name__ == "__main__":
    main()
