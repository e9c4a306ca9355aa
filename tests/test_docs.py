"""The documentation runs and points where it says.

README.md and docs/*.md mark the examples that are cheap to run with the info string of their
fenced block: ```` ```bash cheap ```` or ```` ```python cheap ````. Each such block runs here on
its own, in an empty temporary folder where ``configs/`` and ``benchmarks/`` link to the
repository's, with this environment's ``bin/`` first on ``PATH`` (bash blocks under
``set -euo pipefail``), and must exit 0. Longer examples are plain blocks and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED_PAGES = [*PAGES, REPO / "CHANGELOG.md", REPO / "benchmarks" / "RESULTS.md"]
LANGUAGES = {"bash", "python"}
TAGS = {"cheap"}
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown page."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    tags: frozenset[str]
    text: str

    @property
    def name(self) -> str:
        """``page:line``, the block's test id."""
        return f"{self.page.relative_to(REPO)}:{self.line}"


def fenced_blocks(page: Path) -> Iterator[Block]:
    """The fenced blocks of ``page`` (fences at the start of a line)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\S*)[ \t]*(.*)$", lines[i])
        if match is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page.relative_to(REPO)}:{start + 1}: a fenced block is never closed")
        i += 1
        yield Block(page, start + 1, match[1], frozenset(match[2].split()), "\n".join(body) + "\n")


def cheap_blocks() -> list[Block]:
    """Every block marked ``cheap``."""
    return [block for page in PAGES for block in fenced_blocks(page) if "cheap" in block.tags]


def run_block(block: Block, folder: Path) -> subprocess.CompletedProcess:
    """Run one block in ``folder`` the way the module docstring says."""
    for name in ("configs", "benchmarks"):
        (folder / name).symlink_to(REPO / name, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACENAS_PARENT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    if block.language == "bash":
        command = ["bash", "-c", "set -euo pipefail\n" + block.text]
    else:
        script = folder / "example.py"
        script.write_text(block.text, encoding="utf-8")
        command = [sys.executable, str(script)]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("block", cheap_blocks(), ids=lambda b: b.name)
def test_cheap_block_runs(block: Block, tmp_path: Path) -> None:
    done = run_block(block, tmp_path)
    output = f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{block.name} exited with {done.returncode}\n{output}"


def test_cheap_blocks_are_found() -> None:
    """The marker is spelled so that the pages have cheap examples of both languages, the README
    included; a misspelt tag or language fails here instead of silently not running."""
    blocks = cheap_blocks()
    assert {b.language for b in blocks} == LANGUAGES
    assert any(b.page.name == "README.md" for b in blocks)
    for page in PAGES:
        for block in fenced_blocks(page):
            assert block.tags <= TAGS, f"{block.name}: unknown tag(s) {sorted(block.tags - TAGS)}"
            if block.tags:
                assert block.language in LANGUAGES, f"{block.name}: a cheap block must be bash or python"


def test_marker_is_detected_and_run(tmp_path: Path) -> None:
    """The harness itself: a failing cheap block fails, and the blocks run in the folder given."""
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash cheap\ntest -d configs\nfalse\necho unreachable\n```\n", encoding="utf-8")
    (block,) = fenced_blocks(page)
    assert block.tags == {"cheap"} and block.line == 3
    work = tmp_path / "work"
    work.mkdir()
    done = run_block(block, work)
    assert done.returncode == 1 and "unreachable" not in done.stdout


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    return {_slug(m[1]) for line in lines if (m := re.match(r"^#{1,6}\s+(.*)$", line))}


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository_and_resolve(page: Path) -> None:
    """Every relative link points at a file of this repository (and, with ``#``, at a heading of
    that page); nothing links outside it."""
    if not page.exists():
        pytest.skip(f"{page.relative_to(REPO)} is not there")
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(REPO), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {target}: no such heading"


OLD_SPELLINGS = {
    r"facenas (eval-detections|fairness-report|fairness-compare|evaluate-transfer|search-report)\b": "an old verb",
    r"facenas benchmark\b": "the old `facenas benchmark` group (now `facenas hyperfd`)",
    r"facenas search[ \t]+-": "`facenas search` without `run`",
    r"--benchmark\b": "`--benchmark` (now `--table_config`)",
    r"--ckpt\b(?!_)": "`--ckpt` (now `--ckpt_path`)",
    r"\b(from|import) (core|datamodules|callbacks|models|training|search|demos)\b": "an old import name",
    r"(class_path: |python -m )(core|datamodules|callbacks|models|training|search|demos)\.": "an old import name",
}


@pytest.mark.parametrize(
    "page",
    [p for p in [*PAGES, REPO / "benchmarks" / "RESULTS.md"] if p.name != "cli.md"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_no_old_command_or_import_names(page: Path) -> None:
    """The guides use the current grammar and ``facenas.*`` names; the old spellings are listed
    only in CHANGELOG.md and in the generated CLI reference (docs/cli.md), which shows the
    deprecated aliases."""
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if "hyperfd_top_picks.py" in line:  # a benchmark script with its own options
            continue
        for pattern, what in OLD_SPELLINGS.items():
            assert not re.search(pattern, line), f"{page.relative_to(REPO)}:{number}: {what}: {line.strip()}"
