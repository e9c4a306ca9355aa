"""benchmarks/hyperfd/snapshot_stores.py: a consistent copy of a table's stores, taken while a
store is open for writing, that a resumed build reads as the original."""

from __future__ import annotations

import subprocess
import sys

from facenas.search.store import StudyStore
from facenas.search.trial import Result, Status, Trial

from .conftest import REPO


def test_snapshot_copies_every_store_with_its_finished_and_running_trials(tmp_path):
    table = tmp_path / "table"
    store = StudyStore(table / "orig/seed0/study.sqlite")  # left open, as a running build holds it
    done = Trial(0, {"lr": 0.1}, 2.0, 0)
    store.start(done)
    store.finish(done, Result(Status.SUCCESS, {"val/ap50": 0.5}, 3.0))
    store.start(Trial(1, {"lr": 0.01}, 2.0, 0))
    StudyStore(table / "fog/seed1/study.sqlite").close()
    (table / "orig/seed0/trial_0000").mkdir()  # trial folders are not copied

    out = tmp_path / "snapshot"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/hyperfd/snapshot_stores.py"), str(table), str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "2 store(s) copied" in run.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "fog/seed1/study.sqlite",
        "orig/seed0/study.sqlite",
    ]
    copy = StudyStore(out / "orig/seed0/study.sqlite", read_only=True)
    assert [(t.trial.id, t.result.status if t.result else None) for t in copy.trials()] == [
        (0, Status.SUCCESS),
        (1, None),
    ]
    assert copy.trials()[0].result.values == {"val/ap50": 0.5}
    store.close()

    empty = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/hyperfd/snapshot_stores.py"), str(tmp_path / "none"), str(out)],
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 1 and "no <dataset>/seed<k>/study.sqlite under" in empty.stderr
