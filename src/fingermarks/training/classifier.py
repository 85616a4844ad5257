"""The LightningModule that trains an image classifier with cross-entropy, and its batch augmentations."""

from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
BatchAugment = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["AUGMENTS", "ClassifierModule", "RandomAffine", "RandomShift", "make_augment"]


class RandomShift:
    """Translate every image of a batch (N, C, H, W) by its own random whole-pixel offset in
    [-max_shift, max_shift] along each axis; uncovered pixels are zero. Uses torch's global RNG."""

    def __init__(self, max_shift: int = 2) -> None:
        if max_shift < 0:
            raise ValueError(f"RandomShift: max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.max_shift
        if p == 0:
            return x
        n, c, h, w = x.shape
        padded = F.pad(x, [p, p, p, p])
        top, left = torch.randint(0, 2 * p + 1, (2, n), device=x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chans, rows, cols]

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"


class RandomAffine:
    """A small random affine map per image: rotation up to ``degrees``, scale in 1 +- ``scale``,
    translation up to ``max_shift`` px (bilinear, zero outside). Uses torch's global RNG."""

    def __init__(self, degrees: float = 10.0, scale: float = 0.1, max_shift: float = 2.0) -> None:
        self.degrees, self.scale, self.max_shift = float(degrees), float(scale), float(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        u = torch.rand(n, 4, device=x.device, dtype=x.dtype) * 2 - 1  # uniform in [-1, 1]
        angle = u[:, 0] * math.radians(self.degrees)
        zoom = 1 + u[:, 1] * self.scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size
        tx, ty = u[:, 2] * self.max_shift * 2 / w, u[:, 3] * self.max_shift * 2 / h
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomAffine(degrees={self.degrees}, scale={self.scale}, max_shift={self.max_shift})"


AUGMENTS: dict[str, Callable[[], BatchAugment]] = {"shift": RandomShift, "affine": RandomAffine}


def make_augment(augment: bool | str | BatchAugment | None) -> BatchAugment | None:
    """A recipe's ``augment`` as a batch transform: false/None -> none, true or "shift" -> random
    translation by up to 2 px, "affine" -> a small random affine map, a callable -> itself."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return RandomShift()
    if isinstance(augment, str):
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augment {augment!r}; use true/false or one of: {', '.join(AUGMENTS)}")
        return AUGMENTS[augment]()
    if callable(augment):
        return augment
    raise TypeError(f"augment must be a bool, a name ({', '.join(AUGMENTS)}) or a callable, got {augment!r}")


def optimizers(parameters, optimizer: OptimizerFactory, scheduler: Callable | None = None):
    """`configure_optimizers`' answer for every training module: the optimizer on `parameters`, with the
    optional scheduler partial (taking the optimizer) stepped per epoch."""
    opt = optimizer(parameters)
    return opt if scheduler is None else {"optimizer": opt, "lr_scheduler": scheduler(opt)}


class ClassifierModule(L.LightningModule):
    """Supervised training of `model` (pixels in [0, 1] in, logits out).

    `optimizer` is a partial (Hydra `_partial_: true`) that takes the parameters;
    `scheduler` an optional partial taking the optimizer (stepped per epoch).
    `label_smoothing` applies to the training loss only (validation/test report plain cross-entropy);
    `augment` (see `make_augment`) transforms each training batch on its tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: Callable | None = None,
        label_smoothing: float = 0.0,
        augment: bool | str | BatchAugment | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = float(label_smoothing)
        self.augment = make_augment(augment)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Cross-entropy, label-smoothed when training."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if train else 0.0)

    def _step(self, batch, metric: MulticlassAccuracy, stage: str) -> torch.Tensor:
        x, y = batch
        train = stage == "train"
        if train and self.augment is not None:
            x = self.augment(x)
        logits = self.model(x)
        loss = self.loss(logits, y, train)
        metric.update(logits, y)
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=True, prog_bar=train)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_acc, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, self.test_acc, "test")

    def configure_optimizers(self):
        return optimizers(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)
