"""The `facenas` command as installed: the console script and ``python -m facenas`` in fresh
processes (the other tests call its main() in the test process), and the in-process runner of
the tests gives what a fresh process gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, command_env, run_facenas


def test_python_m_facenas_lists_the_verbs_and_ends_a_user_error_with_code_2():
    out = run_facenas("--help", process=True)
    assert out.returncode == 0 and "usage: facenas" in out.stdout and "fit" in out.stdout
    bad = run_facenas("frobnicate", process=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert "unknown verb 'frobnicate'" in line


def test_the_console_script_runs():
    script = shutil.which("facenas", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the facenas console script is not installed next to this Python")
    out = subprocess.run(
        [script, "--version"], capture_output=True, text=True, env=command_env(), cwd=REPO, timeout=300
    )
    assert out.returncode == 0 and out.stdout.startswith("facenas "), out.stderr[-2000:]


def test_in_process_runs_give_what_a_fresh_process_gives(tmp_path):
    """Same exit code, stdout and stderr in and out of the test process: a user error, a JSON
    report, and a command that writes files (relative to its working directory)."""
    for args in (
        ["data", "check", "--format", "nope", "--annotations", "x"],
        ["data", "synth", "--out", "s", "--images", "2", "--width", "64", "--height", "48"],
        ["data", "check", "--format", "retinaface", "--annotations", "s/label.txt", "--images", "s/images", "--json"],
    ):
        inside = run_facenas(*args, cwd=tmp_path)
        outside = run_facenas(*args, cwd=tmp_path, process=True)
        assert (inside.returncode, inside.stdout, inside.stderr) == (outside.returncode, outside.stdout, outside.stderr)
    assert json.loads(inside.stdout)["images"] == 2


def test_a_training_logs_and_warns_in_process_as_in_a_fresh_process(tmp_path):
    """Lightning's log lines and the warnings of a `facenas fit` reach the run's stderr, once
    each, in and out of the test process (and again on a second run in the same process)."""
    config = {
        "model": {"class_path": "facenas.demos.toy.ToySearchModule"},
        "data": {"class_path": "facenas.demos.toy.ToyFaceData", "init_args": {"num_val": 8, "batch_size": 4}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False, "logger": False},
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(tmp_path / "toy.yaml"), "--test_after_fit", "false"]
    folders = [tmp_path / name for name in ("outside", "inside", "again")]  # each run writes its own runs/
    for folder in folders:
        folder.mkdir()
    outside = run_facenas(*args, cwd=folders[0], process=True)
    assert outside.returncode == 0 and "max_epochs=1" in outside.stderr, outside.stderr[-2000:]
    for folder in folders[1:]:
        inside = run_facenas(*args, cwd=folder)
        assert (inside.returncode, inside.stdout, inside.stderr) == (outside.returncode, outside.stdout, outside.stderr)
