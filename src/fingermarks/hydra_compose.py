"""Compose the project's Hydra config outside `@hydra.main` (tests, benchmarks, notebooks).

`pipeline.run` reads Hydra's runtime (output dir, cwd) the way `train.py` sees it, so the
composed config carries a runtime section and is registered as the current HydraConfig.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict


def compose_run_config(config_dir: str | Path, overrides: list[str], output_dir: str | Path, *, job_name: str = "compose",
                       config_name: str = "config") -> DictConfig:
    """The config `train.py` would see for these overrides, with `output_dir` as the run directory."""
    config_dir = Path(config_dir).resolve()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(config_dir.parent)
        cfg.hydra.job.name = job_name
    HydraConfig.instance().set_config(cfg)
    return cfg
