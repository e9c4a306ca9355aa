"""Search driver performance.

1. Backend ask + tell time per trial once 200 trials are finished (a cheap two-objective
   function of the ``frnas_joint`` space; median over trials 201-220), for every backend.
2. Driver overhead per in-process trial: study wall time per trial minus the time of the
   training command itself (store writes, ask and tell, the trial's files).
3. Dask: trials per hour with 1 and 2 workers of a ``LocalCluster`` on CPU-bound trials
   (``facenas fit`` subprocesses, one thread each).

    python benchmarks/search.py [--skip-dask] [--warm 200] [--timed 20] [--overhead-trials 20] [--dask-trials 8]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facenas.search.backends import create_searcher  # noqa: E402
from facenas.search.spaces import load_space  # noqa: E402
from facenas.search.study import Study, StudySettings  # noqa: E402
from facenas.search.trial import Objective, Result, Status, Trial  # noqa: E402

BACKENDS = {
    "random": "random",
    "smac hpo (ParEGO)": {"class_path": "smac", "init_args": {"facade": "hpo"}},
    "smac mf (ParEGO, Hyperband)": {"class_path": "smac", "init_args": {"facade": "mf"}},
    "optuna tpe (MOTPE)": {"class_path": "optuna", "init_args": {"sampler": "tpe"}},
    "optuna nsga2": {"class_path": "optuna", "init_args": {"sampler": "nsga2"}},
    "moasha": {"class_path": "moasha", "init_args": {"eta": 2}},
}
MULTI_FIDELITY = {"smac mf (ParEGO, Hyperband)", "moasha"}


def quadratic(trial: Trial) -> Result:
    c = trial.config
    lr = c.get("lr_adam", c.get("lr_sgd", 0.1))
    err = (int(c["edge1"]) - 3) ** 2 / 10 + abs(math.log10(lr) + 2.5) + 1.0 / (trial.budget or 1.0)
    rd = (int(c["edge2"]) - 6) ** 2 / 10 + (0.5 if c["head"] == "MagFace" else 0.0)
    return Result(Status.SUCCESS, {"err": err, "rd": rd})


def ask_tell(name: str, spec, warm: int = 200, timed: int = 20) -> float:
    searcher = create_searcher(spec)
    budget = None
    if name in MULTI_FIDELITY:
        from facenas.search.backends import Budget

        budget = Budget(1, 16, 2)
    searcher.setup(load_space("frnas_joint", seed=0), [Objective("err"), Objective("rd")], budget, 0, warm + timed)
    times = []
    for i in range(warm + timed):
        start = time.perf_counter()
        proposal = searcher.ask()
        trial = Trial(i, proposal.config, proposal.budget, i, proposal.info, proposal.backend_seed)
        result = quadratic(trial)
        searcher.tell(trial, result)
        if i >= warm:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def toy_settings(tmp: Path, name: str, n_trials: int, executor, burn: float = 0.0, epochs: int = 1) -> StudySettings:
    from ConfigSpace import ConfigurationSpace, Float

    cs = ConfigurationSpace(name="toy", seed=0)
    cs.add([Float("x", (0.0, 1.0)), Float("y", (0.0, 1.0))])
    space = tmp / "space.json"
    cs.to_json(space)
    base = tmp / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {"class_path": "facenas.demos.toy.ToySearchModule", "init_args": {"burn": burn}},
                "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 8, "batch_size": 8}},
                "trainer": {
                    "accelerator": "cpu",
                    "max_epochs": epochs,
                    "enable_checkpointing": False,
                    "limit_train_batches": 1,
                },
            }
        )
    )
    return StudySettings(
        name=name,
        space=str(space),
        base=[str(base)],
        mapping={"model.init_args.x": "x", "model.init_args.y": "y"},
        objectives=[Objective("val/score")],
        backend="random",
        executor=executor,
        n_trials=n_trials,
        storage=str(tmp / f"{name}.sqlite"),
        runs_dir=str(tmp / name),
        report=False,
    )


def driver_overhead(n_trials: int = 20) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = toy_settings(Path(tmp), "overhead", n_trials, "inprocess")
        # the first trial pays for importing Lightning; measure the steady state after it
        Study(toy_settings(Path(tmp), "warmup", 1, "inprocess"), quiet=True).run()
        fits: list[float] = []
        import facenas.search.runner as runner

        original = runner.run_in_process

        def timed(job, report=None):
            result = original(job, report)
            fits.append(result.train_seconds)
            return result

        import facenas.search.executors as executors

        executors.run_in_process = timed
        start = time.perf_counter()
        Study(settings, quiet=True).run()
        wall = time.perf_counter() - start
        executors.run_in_process = original
    per_trial = wall / n_trials
    return per_trial, per_trial - statistics.mean(fits)


def dask_rate(workers: int, n_trials: int, burn: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        settings = toy_settings(
            Path(tmp), f"dask{workers}", n_trials, {"class_path": "dask", "init_args": {"workers": workers}}, burn=burn
        )
        start = time.perf_counter()
        store = Study(settings, quiet=True).run()
        elapsed = time.perf_counter() - start
        assert all(t.status == Status.SUCCESS for t in store.trials()), [t.result.error for t in store.trials()]
    return n_trials / elapsed * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--warm", type=int, default=200, help="finished trials before ask + tell is timed")
    parser.add_argument("--timed", type=int, default=20, help="trials whose ask + tell is timed")
    parser.add_argument("--overhead-trials", type=int, default=20, help="in-process trials of the overhead study")
    parser.add_argument("--dask-trials", type=int, default=8)
    parser.add_argument("--burn", type=float, default=6.0, help="CPU seconds of work per Dask trial")
    args = parser.parse_args()
    os.chdir(REPO)
    os.environ["PYTHONPATH"] = str(REPO)
    os.environ["FACENAS_PROGRESS"] = "0"
    print(f"| backend | ask + tell per trial at {args.warm} finished trials (ms) |")
    print("|---|---|")
    for name, spec in BACKENDS.items():
        print(f"| {name} | {1e3 * ask_tell(name, spec, args.warm, args.timed):.1f} |", flush=True)
    per_trial, overhead = driver_overhead(args.overhead_trials)
    print(
        f"\nin-process trial (toy model, 1 epoch): {per_trial:.2f} s per trial, "
        f"of which {overhead:.2f} s outside the training command"
    )
    if not args.skip_dask:
        os.environ["OMP_NUM_THREADS"] = "1"  # one core per trial, so workers do not share threads
        one = dask_rate(1, args.dask_trials, args.burn)
        two = dask_rate(2, args.dask_trials, args.burn)
        print("\n| Dask LocalCluster | trials per hour |")
        print("|---|---|")
        print(f"| 1 worker | {one:.0f} |")
        print(f"| 2 workers | {two:.0f} |")
        print(
            f"\n2 workers / 1 worker: {two / one:.2f}x "
            f"({args.dask_trials} CPU-bound trials of ~{args.burn:.0f} s of work each)"
        )


if __name__ == "__main__":
    main()
