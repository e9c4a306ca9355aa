"""Shared fixtures: where the real data lives, and a runner for the `facenas` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACENAS_DATA", REPO.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """A path under the shared real-data folder; skips the test when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def wider_val() -> tuple[Path, Path]:
    """(gt txt, image folder) of the WIDER FACE validation subset."""
    return (
        data_path("widerface", "wider_face_split", "wider_face_val_bbx_gt.txt"),
        data_path("widerface", "WIDER_val", "images"),
    )


def run_facenas(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m facenas ARGS`` in a fresh process, as a user would, and capture its output."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FACENAS_PROGRESS": "0",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **(env or {}),
    }
    full_env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "facenas", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def synthetic_identities(tmp_path: Path, identities: int = 16, images: int = 8, ratios=(4, 2, 2), **kw):
    """A small closed-set FaceIDDataModule of synthetic identities at 32 px (each identity's
    images split by ``ratios``), for tests that train in seconds."""
    from facenas.datamodules.recognition import FaceIDDataModule

    return FaceIDDataModule(
        synthetic_identities=identities,
        synthetic_images_per_identity=images,
        synthetic_size=32,
        image_size=32,
        synthetic_root=str(tmp_path / "ids"),
        split_file=str(tmp_path / "split.json"),
        split_by="image",
        split_ratios=list(ratios),
        batch_size=16,
        eval_batch_size=32,
        num_workers=0,
        **kw,
    )
