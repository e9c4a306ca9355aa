"""benchmarks/hyperfd/select_reading.py: the pre-registered rule that turns the two offline
protocols' results into a method's default reading."""

from __future__ import annotations

import csv
import subprocess
import sys

from .conftest import REPO

CONFIG = """
methods:
  - random
  - {name: paper, method: hyperfd, ratio: [5, 1, 1]}
  - {name: other, method: hyperfd, ratio: [0, 1, 1]}
  - similar_portfolio
  - {name: wide, method: similar_portfolio, bandwidth: 2.0}
"""


def write_runs(folder, ranks):
    """runs.csv of an evaluation: ``ranks[method]`` is a function of (run, dataset index)."""
    folder.mkdir()
    with open(folder / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "run", "dataset", "rank"])
        writer.writeheader()
        for method, rank in ranks.items():
            for run in range(10):
                for d in range(4):
                    writer.writerow({"method": method, "run": run, "dataset": f"split{d}/d{d}", "rank": rank(run, d)})


def decide(tmp_path, ranks):
    config = tmp_path / "selection.yaml"
    config.write_text(CONFIG)
    write_runs(tmp_path / "lodo", ranks)
    write_runs(tmp_path / "halves", ranks)
    out = tmp_path / "decision.md"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/hyperfd/select_reading.py"), str(config), str(tmp_path / "lodo"),
         str(tmp_path / "halves"), "--samples", "300", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert out.read_text() == run.stdout
    return run.stdout


def test_a_resolved_better_reading_becomes_the_default_and_a_tie_keeps_the_first(tmp_path):
    text = decide(
        tmp_path,
        {
            "random": lambda run, d: 50.0,
            "paper": lambda run, d: 30.0 + d,
            "other": lambda run, d: 20.0 + d + run % 2,  # better in every cell
            "similar_portfolio": lambda run, d: 25.0 + 4 * (run % 2),
            "wide": lambda run, d: 25.0 + 4 * ((run + 1) % 2) - 0.1,  # lower mean, within the noise
        },
    )
    assert "8 cells (split x online dataset) over 10 runs" in text
    assert "- hyperfd: other ranks best (other - paper: -9.50" in text and "it becomes the default" in text
    assert "'ratio': [0, 1, 1]" in text
    assert "- similar_portfolio: wide ranks best" in text
    assert "not resolved, so similar_portfolio stays the default" in text


def test_the_first_reading_stays_when_it_ranks_best(tmp_path):
    text = decide(
        tmp_path,
        {n: (lambda run, d, k=k: 10.0 * k + d) for k, n in enumerate(["paper", "other", "similar_portfolio", "wide"])},
    )
    assert "- hyperfd: paper ranks best of paper, other; it stays the default." in text
    assert "- similar_portfolio: similar_portfolio ranks best of similar_portfolio, wide; it stays the default." in text
