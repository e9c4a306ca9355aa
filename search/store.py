"""The study store: one SQLite file per study, the single source of truth.

Every change is one committed transaction (SQLite's journal makes it atomic), so a study killed
at any instant keeps every finished trial; trials found ``running`` on resume were in flight
and are run again.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .trial import Result, Status, Trial

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    budget REAL,
    seed INTEGER NOT NULL,
    backend_seed INTEGER,
    status TEXT NOT NULL,
    objectives TEXT,
    intermediate TEXT,
    error TEXT,
    run_dir TEXT,
    started REAL NOT NULL,
    finished REAL,
    duration REAL
);
"""


def _dumps(value: Any) -> str:
    """JSON that keeps non-finite floats (as strings SQLite and json both round-trip)."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v.item() if hasattr(v, "item") else v

    return json.dumps(fix(value), sort_keys=True)


def _loads(text: str | None) -> Any:
    def fix(v: Any) -> Any:
        if v in ("inf", "-inf", "nan"):
            return float(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return None if text is None else fix(json.loads(text))


@dataclass
class StoredTrial:
    """A row of the trials table."""

    trial: Trial
    status: Status
    result: Result | None
    started: float
    finished: float | None


class StudyStore:
    """SQLite-backed record of a study's settings and trials."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
        if "backend_seed" not in columns:  # a store written before the column existed
            self._write("ALTER TABLE trials ADD COLUMN backend_seed INTEGER", ())

    def close(self) -> None:
        self._conn.close()

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        with self._conn:  # BEGIN ... COMMIT
            return self._conn.execute(sql, args)

    # ---------------------------------------------------------------- study settings

    def get_meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        return None if row is None else _loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", (key, _dumps(value)))

    # ---------------------------------------------------------------- trials

    def next_id(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM trials").fetchone()
        return int(row[0])

    def start(self, trial: Trial) -> None:
        """Record a trial as running (replacing an interrupted row with the same id)."""
        self._write(
            "INSERT OR REPLACE INTO trials (id, config, budget, seed, backend_seed, status, started) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                trial.id,
                _dumps(trial.config),
                trial.budget,
                trial.seed,
                trial.backend_seed,
                Status.RUNNING.value,
                time.time(),
            ),
        )

    def finish(self, trial: Trial, result: Result) -> None:
        """Record a trial's result."""
        self._write(
            "UPDATE trials SET status = ?, objectives = ?, intermediate = ?, error = ?, run_dir = ?, finished = ?, "
            "duration = ? WHERE id = ?",
            (
                result.status.value,
                _dumps(result.values),
                _dumps(result.intermediate),
                result.error,
                result.run_dir,
                time.time(),
                result.duration,
                trial.id,
            ),
        )

    def trials(self) -> list[StoredTrial]:
        """Every trial in id order."""
        rows = self._conn.execute(
            "SELECT id, config, budget, seed, backend_seed, status, objectives, intermediate, error, "
            "run_dir, started, finished, duration FROM trials ORDER BY id"
        ).fetchall()
        out = []
        for (
            tid,
            config,
            budget,
            seed,
            backend_seed,
            status,
            objectives,
            intermediate,
            error,
            run_dir,
            started,
            finished,
            duration,
        ) in rows:
            trial = Trial(id=tid, config=_loads(config), budget=budget, seed=seed, backend_seed=backend_seed)
            state = Status(status)
            result = None
            if state != Status.RUNNING:
                result = Result(
                    status=state,
                    values=_loads(objectives) or {},
                    duration=duration or 0.0,
                    error=error,
                    run_dir=run_dir,
                    intermediate=[tuple(x) for x in (_loads(intermediate) or [])],
                )
            out.append(StoredTrial(trial, state, result, started, finished))
        return out
