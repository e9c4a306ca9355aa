"""Copy a lookup table's study stores (``<table>/<dataset>/seed<k>/study.sqlite``) to another
folder, or back, so that a build interrupted on a machine that does not keep ``runs/`` resumes
elsewhere: the stores are the table (finished entries are never trained again), the trial folders
(checkpoints, logs) are not needed to resume.

    python benchmarks/hyperfd/snapshot_stores.py runs/hyperfd/real benchmarks/hyperfd/real/stores
    python benchmarks/hyperfd/snapshot_stores.py benchmarks/hyperfd/real/stores runs/hyperfd/real

Each store is copied with SQLite's online backup, so a copy taken while a build writes to the
store is a consistent snapshot (entries finished after it are trained again on resume).
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path


def snapshot(source: Path, target: Path) -> list[Path]:
    copied = []
    for store in sorted(source.glob("*/seed*/study.sqlite")):
        out = target / store.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as src, sqlite3.connect(out) as dst:
            src.backup(dst)
        with sqlite3.connect(out) as dst:  # a standalone file: no -wal / -shm beside the copy
            dst.execute("PRAGMA journal_mode=DELETE")
        copied.append(out)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder holding <dataset>/seed<k>/study.sqlite")
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    copied = snapshot(args.source, args.target)
    if not copied:
        raise SystemExit(f"no <dataset>/seed<k>/study.sqlite under {args.source}")
    print(f"{len(copied)} store(s) copied to {args.target}")


if __name__ == "__main__":
    main()
