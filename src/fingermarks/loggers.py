"""One logger per stage (host, embedding of each user, attacks) from the `logger` config group."""

from __future__ import annotations

from typing import Any, Callable

from hydra.utils import instantiate
from omegaconf import DictConfig


def logger_factory(cfg: DictConfig | None, run_name: str = "") -> Callable[[str], Any]:
    """Return `make(stage)`: a fresh logger named after the stage, or None when logging is off.

    A wandb run is finished before the next stage starts one (wandb allows one active run).
    """

    def make(stage: str):
        if not cfg:
            return None
        target = str(cfg.get("_target_", ""))
        if "Wandb" in target:
            import wandb

            wandb.finish()
            return instantiate(cfg, name=f"{run_name}{stage}", job_type=stage)
        return instantiate(cfg, name=stage)

    return make


def finish() -> None:
    """Close an open wandb run, if any (no-op without wandb)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
