"""Host training from scratch: a few steps, reproducibility, checkpoints that check what they hold."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from fingermarks.data import DigitsDataModule
from fingermarks.errors import CheckpointError
from fingermarks.model_io import load_model, save_model
from fingermarks.training import ClassifierModule, fit_classifier

MODEL = OmegaConf.create({"_target_": "fingermarks.models.SmallCNN", "width": 8})
TRAINER = functools.partial(L.Trainer, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            deterministic=True)


def _fit(seed: int, epochs: int = 3):
    dm = DigitsDataModule(batch_size=64)
    opt = functools.partial(torch.optim.Adam, lr=3e-3)
    return fit_classifier(MODEL, dm, seed=seed, epochs=epochs, optimizer=opt, trainer_factory=TRAINER)


def test_host_training_learns_and_reports():
    model, info = _fit(seed=0)
    assert info["clean_acc"] > 0.8 and info["epochs"] == 3 and info["train_seconds"] > 0
    assert not model.training


def test_same_seed_same_weights_other_seed_differs():
    a, _ = _fit(seed=1, epochs=1)
    b, _ = _fit(seed=1, epochs=1)
    c, _ = _fit(seed=2, epochs=1)
    wa, wb, wc = (m.classifier.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_classifier_module_logs_accuracy():
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    from fingermarks.models import SmallCNN

    module = ClassifierModule(SmallCNN(num_classes=10, input_shape=[1, 8, 8], width=4), 10,
                              functools.partial(torch.optim.Adam, lr=1e-3))
    trainer = TRAINER(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    assert "val/acc" in trainer.callback_metrics and "train/loss_epoch" in trainer.callback_metrics


def test_model_file_round_trip_and_mismatch_errors(tmp_path):
    from fingermarks.models import SmallCNN

    net = SmallCNN(num_classes=10, input_shape=[1, 8, 8], width=4).eval()
    path = save_model(net, tmp_path / "m.ckpt", {"clean_acc": 0.5})
    back = load_model(path, arch="small_cnn", num_classes=10, input_shape=[1, 8, 8])
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(net(x), back(x))
    with pytest.raises(CheckpointError, match="expected num_classes=100"):
        load_model(path, num_classes=100)
    with pytest.raises(CheckpointError, match="expected arch=resnet18"):
        load_model(path, arch="resnet18")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "bad.ckpt")
