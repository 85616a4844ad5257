"""Train a classifier from scratch under a Lightning Trainer and measure it."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import lightning as L
from omegaconf import DictConfig
from hydra.utils import instantiate
from torch import nn

from fingermarks.metrics import accuracy
from fingermarks.model_io import load_model, save_model
from fingermarks.training.classifier import ClassifierModule

TrainerFactory = Callable[..., L.Trainer]


def build_classifier(model_cfg: DictConfig, datamodule) -> nn.Module:
    """Instantiate `model_cfg` for the data: class count, input shape and normalisation come from it."""
    return instantiate(
        model_cfg,
        num_classes=datamodule.num_classes,
        input_shape=list(datamodule.input_shape),
        mean=list(datamodule.mean),
        std=list(datamodule.std),
    )


def fit_classifier(
    model_cfg: DictConfig,
    datamodule,
    *,
    seed: int,
    epochs: int,
    optimizer: Callable,
    trainer_factory: TrainerFactory,
    scheduler: Callable | None = None,
    callbacks: Sequence[L.Callback] = (),
    logger: Any = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Seed, build and train a classifier; return it (eval mode) with its test accuracy and time."""
    L.seed_everything(seed, workers=True)
    datamodule.setup("fit")
    model = build_classifier(model_cfg, datamodule)
    module = ClassifierModule(model, datamodule.num_classes, optimizer, scheduler)
    trainer = trainer_factory(max_epochs=epochs, callbacks=list(callbacks), logger=logger if logger is not None else False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    model.eval()
    return model, {
        "clean_acc": accuracy(model, datamodule.test_set),
        "val_acc": accuracy(model, datamodule.val_set),
        "train_seconds": seconds,
        "epochs": trainer.current_epoch,
        "seed": seed,
    }


def save_classifier(model: nn.Module, path, info: dict[str, Any]) -> None:
    save_model(model, path, meta=info)


def load_classifier(path, datamodule, arch: str | None = None) -> nn.Module:
    """Load a model file and check it fits the data (class count, input shape) and `arch`."""
    return load_model(path, arch=arch, num_classes=datamodule.num_classes, input_shape=datamodule.input_shape)
