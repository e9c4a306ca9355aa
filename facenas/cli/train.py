"""``facenas fit | validate | test | predict``: the LightningCLI of :mod:`training`."""

from __future__ import annotations


def run(verb: str, argv: list[str]) -> int:
    from facenas.training import FaceNASCLI

    FaceNASCLI([verb, *argv])
    return 0
