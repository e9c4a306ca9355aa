"""The packages' layers: imports only point down (core < datamodules < callbacks < models <
training < search < facenas_cli < the facenas.py entry point), the toy modules are used only by
tests and benchmarks, and
benchmarks never import tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

LAYERS = {
    "core": 0,
    "datamodules": 1,
    "callbacks": 2,
    "models": 3,
    "training": 4,
    "search": 5,
    "facenas_cli": 6,
    "facenas": 7,
    "demos": 7,
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def test_imports_only_point_down():
    upward = []
    for package, rank in LAYERS.items():
        files = (
            [REPO / f"{package}.py"] if (REPO / f"{package}.py").is_file() else sorted((REPO / package).rglob("*.py"))
        )
        assert files, package
        for file in files:
            for line, imported in imports(file):
                if imported in LAYERS and imported != package and LAYERS[imported] >= rank:
                    upward.append(f"{file.relative_to(REPO)}:{line} ({package}) imports {imported}")
    assert not upward, "\n".join(upward)


def test_benchmarks_do_not_import_tests():
    found = [
        f"{f.relative_to(REPO)}:{line}"
        for f in sorted((REPO / "benchmarks").glob("*.py"))
        for line, imported in imports(f)
        if imported == "tests"
    ]
    assert not found, found


@pytest.mark.parametrize(
    "script",
    sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if p.name != "timing.py"),  # a helper
)
def test_benchmark_scripts_start(script):
    """Every benchmark script imports what it needs from the current layout and parses its
    arguments (a moved function breaks it here, not when someone runs the benchmark)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()
