"""Compose the project's Hydra config outside `@hydra.main` (benchmarks and notebooks)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")


def compose_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The config `train.py` would see for these overrides, with `output_dir` as the run directory."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.name = "benchmark"
    HydraConfig.instance().set_config(cfg)
    return cfg
