"""Shared fixtures. wandb's mode is decided once per process, so it is set before anything imports it."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="wandb-tests-"))

import functools  # noqa: E402

import lightning as L  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fingermarks.hydra_compose import compose_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The fastest settings that still exercise every stage of the chain on digits.
TINY = [
    "data=digits",
    "host.recipe.epochs=8",
    "trainer.enable_progress_bar=false",
    "pool.models=[${model},${model}]",
    "method.references=[${model}]",
    "method.n_triggers=30",  # the default's 128 triggers cost embedding epochs; the tests check the mechanics
    "key_secret=tests",
]


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "config") -> DictConfig:
    """The config train.py would see, with `output_dir` as Hydra's run directory."""
    return compose_run_config(CONF, overrides, output_dir, job_name="test", config_name=config_name)


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


# -- tiny pieces for the unit tests of attacks, robustness and baselines ------------------
QUIET_TRAINER = functools.partial(
    L.Trainer, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, num_sanity_val_steps=0,
)


@pytest.fixture(scope="module")
def single_thread():
    """Two cores shared with other work: for tiny models torch's thread pool only adds sync overhead (~20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def datamodule():
    from fingermarks.data import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup("fit")
    return dm


@pytest.fixture
def ctx(datamodule, tmp_path):
    """A RunContext on digits whose models are width-4 SmallCNNs trained for one epoch."""
    from fingermarks.context import RunContext

    return RunContext(
        datamodule=datamodule, data_cfg=OmegaConf.create({"_target_": "fingermarks.data.DigitsDataModule"}),
        model_cfg=OmegaConf.create({"_target_": "fingermarks.models.SmallCNN", "width": 4}),
        recipe=OmegaConf.create({"epochs": 1}), trainer_factory=QUIET_TRAINER, output_dir=tmp_path,
    )


@pytest.fixture(scope="module")
def tiny_classifier(datamodule):
    """A width-4 SmallCNN on digits, trained just enough (3 epochs, seed 0) to give meaningful labels."""
    from fingermarks.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8), mean=datamodule.mean, std=datamodule.std, width=4)
    x, y = datamodule.train_eval_set.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return model.eval()
