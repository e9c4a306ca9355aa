"""The study store: one SQLite file per study, the single source of truth.

Every change is one committed transaction (SQLite's journal makes it atomic), so a study killed
at any instant keeps every finished trial; trials found ``running`` on resume were in flight
and are run again. A file that is not a readable study store (truncated, garbled, another
program's database) is one :class:`StoreError` naming it, and reports open the store read-only.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .trial import Result, Status, Trial


class StoreError(ValueError):
    """The study store cannot be used (the command line prints it as one line, exit code 2)."""


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
    """SQLite-backed record of a study's settings and trials.

    Args:
        path: the SQLite file (created when missing, unless ``read_only``).
        read_only: open an existing file without ever writing to it (reports).
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        memory = str(path) == ":memory:"
        try:
            if read_only:
                if not self.path.is_file():
                    raise FileNotFoundError(2, "study store not found", str(self.path))
                uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
                if not any(self.path.with_name(self.path.name + s).exists() for s in ("-wal", "-journal")):
                    # no writer has it open and no transaction is pending: read it as a file that
                    # does not change, so that SQLite creates no -wal / -shm files next to it
                    uri += "&immutable=1"
                self._conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            else:
                if not memory:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
            self._check()
            if not read_only:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.executescript(_SCHEMA)
                columns = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
                if "backend_seed" not in columns:  # a store written before the column existed
                    self._write("ALTER TABLE trials ADD COLUMN backend_seed INTEGER", ())
        except sqlite3.DatabaseError as exc:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
            raise StoreError(f"{self.path} is not a readable study store ({exc})") from None

    def _check(self) -> None:
        """Refuse a damaged file or another program's database before anything is read or written."""
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not tables & {"study", "trials"}:
            self._conn.close()
            raise StoreError(
                f"{self.path} is an SQLite database but not a study store (tables: {', '.join(sorted(tables))})"
            )
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            self._conn.close()
            detail = " ".join("; ".join(problems[:3]).split())
            raise StoreError(f"{self.path} is damaged ({detail}); restore it or move it away")

    def close(self) -> None:
        self._conn.close()

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only")
        try:
            with self._conn:  # BEGIN ... COMMIT
                return self._conn.execute(sql, args)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise StoreError(f"{self.path} cannot be written ({exc})") from None

    # ---------------------------------------------------------------- study settings

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if self.read_only and "no such table" in str(exc):  # an empty file: nothing recorded yet
                return []
            raise StoreError(f"{self.path} cannot be read ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} cannot be read ({exc})") from None

    def get_meta(self, key: str) -> Any:
        rows = self._read("SELECT value FROM study WHERE key = ?", (key,))
        return _loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", (key, _dumps(value)))

    # ---------------------------------------------------------------- trials

    def next_id(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(id), -1) + 1 FROM trials")[0][0])

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

    def _columns(self) -> set[str]:
        return {row[1] for row in self._read("PRAGMA table_info(trials)")}

    def trials(self) -> list[StoredTrial]:
        """Every trial in id order. A store written before a column existed (``backend_seed``)
        reads as if the column were empty, also read-only; a row that cannot be read (bad JSON,
        an unknown status) is one :class:`StoreError` naming the store and the trial."""
        backend_seed = "backend_seed" if "backend_seed" in self._columns() else "NULL"
        rows = self._read(
            f"SELECT id, config, budget, seed, {backend_seed}, status, objectives, intermediate, error, "
            "run_dir, started, finished, duration FROM trials ORDER BY id"
        )
        out = []
        for row in rows:
            try:
                out.append(self._trial(row))
            except (ValueError, TypeError) as exc:
                reason = " ".join(str(exc).split())[:200]
                raise StoreError(f"{self.path}: trial {row[0]} cannot be read ({reason})") from None
        return out

    @staticmethod
    def _trial(row: tuple) -> StoredTrial:
        """A trials row as a :class:`StoredTrial`."""
        (
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
        ) = row
        try:
            state = Status(status)
        except ValueError:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(s.value for s in Status)}") from None
        fields: dict[str, Any] = {}
        for name, text in (("config", config), ("objectives", objectives), ("intermediate", intermediate)):
            try:
                fields[name] = _loads(text)
            except ValueError as exc:
                raise ValueError(f"its {name} is not JSON: {exc}") from None
        if not isinstance(fields["config"], dict):
            raise ValueError(f"its config is not a JSON object: {config}")
        trial = Trial(id=tid, config=fields["config"], budget=budget, seed=seed, backend_seed=backend_seed)
        result = None
        if state != Status.RUNNING:
            result = Result(
                status=state,
                values=fields["objectives"] or {},
                duration=duration or 0.0,
                error=error,
                run_dir=run_dir,
                intermediate=[tuple(x) for x in (fields["intermediate"] or [])],
            )
        return StoredTrial(trial, state, result, started, finished)
