"""Shared fixtures. wandb's mode is decided once per process, so it is set before anything imports it."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="wandb-tests-"))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The fastest settings that still exercise every stage of the chain on digits.
TINY = [
    "data=digits",
    "host.recipe.epochs=8",
    "trainer.enable_progress_bar=false",
    "method.decision.null_models=1",
    "method.references=[${model}]",
]


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "config") -> DictConfig:
    """The config train.py would see, with `output_dir` as Hydra's run directory."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.name = "test"
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_cli(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    """Run `python <args>` in the repo root; return the CompletedProcess (text)."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model cache for the whole session: each model is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, cache_dir):
    """The whole chain once on digits (host, key, 3 users, ONNX, verification)."""
    from fingermarks.pipeline import run

    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(TINY + ["users=3", f"cache_dir={cache_dir}"], out)
    summary = run(cfg, out)
    return cfg, out, summary
