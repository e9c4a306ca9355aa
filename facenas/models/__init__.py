"""LightningModules (face detection, face identification) and the nn.Modules they are made of."""

from __future__ import annotations

from .errors import NonFiniteLossError

__all__ = ["NonFiniteLossError"]
