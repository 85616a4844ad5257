"""The project's Hydra config for benchmark scripts (run from this folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from fingermarks.hydra_compose import compose_run_config

ROOT = Path(__file__).resolve().parents[1]
logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")


def compose_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The config `train.py` would see for these overrides, with `output_dir` as the run directory."""
    return compose_run_config(ROOT / "conf", overrides, output_dir, job_name="benchmark")
