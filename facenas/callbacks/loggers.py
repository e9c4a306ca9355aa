"""Loggers with facenas's defaults."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_online_requested() -> bool:
    """True when the environment asks W&B to sync: an API key, or ``WANDB_MODE=online``."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return False
    return mode == "online" or bool(os.environ.get("WANDB_API_KEY"))


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, offline unless the user asks for W&B online.

    ``offline=None`` (default) means offline unless ``WANDB_API_KEY`` is set or
    ``WANDB_MODE=online``; offline runs never touch the network (sync later with
    ``wandb sync <dir>``). Online start-up gives up after ``init_timeout`` seconds instead of
    hanging. ``finish()`` closes the W&B run; facenas calls it once the whole command is done,
    so one training command is one W&B run.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        project: str | None = "facenas",
        offline: bool | None = None,
        log_model: bool | str = False,
        init_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        offline = not wandb_online_requested() if offline is None else offline
        if not offline:
            import wandb

            kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout))
        super().__init__(name=name, save_dir=save_dir, project=project, offline=offline, log_model=log_model, **kwargs)

    def finish(self) -> None:
        """End the W&B run (no-op when it never started)."""
        if self._experiment is not None:
            self._experiment.finish()
