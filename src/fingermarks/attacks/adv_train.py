"""AT: FGSM adversarial training of the stolen model, Madry-style (paper 5.2.3: 270 iterations,
128 fresh FGSM examples each iteration); axis: iterations (optimiser steps)."""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from fingermarks.attacks.base import Attack, AttackerData, train_with_snapshots
from fingermarks.attacks.finetune import OptimizerFactory, default_optimizer
from fingermarks.context import RunContext
from fingermarks.suspects import ModuleSuspect


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, input_range: tuple[float, float]) -> torch.Tensor:
    """One signed-gradient step of size `eps` up the cross-entropy, kept in the input range.

    The gradient is taken in eval mode so crafting the examples does not move BatchNorm statistics,
    and only with respect to the input (parameter gradients are left untouched).
    """
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    model.train(was_training)
    return (x + eps * grad.sign()).clamp(*input_range).detach()


class FGSMTrainModule(L.LightningModule):
    """Each step: FGSM examples of the batch (fresh, from the current model), then one update on
    clean + adversarial images with the true labels."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, eps: float, input_range: tuple[float, float]) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.eps, self.input_range = eps, input_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x_adv = fgsm(self.model, x, y, self.eps, self.input_range)
        loss = F.cross_entropy(self.model(torch.cat([x, x_adv])), torch.cat([y, y]))
        self.log("attack/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(list(self.model.parameters()))


class AdvTrain(Attack):
    """`eps` is in input units ([0, 1] pixels): 0.1 on MNIST-like data; 8/255 on CIFAR, as in Madry et al."""

    name = "adv_train"
    axis = "iterations"

    def __init__(
        self,
        strengths: Sequence[int],
        eps: float = 0.1,
        optimizer: OptimizerFactory | None = None,
        batch_size: int = 128,
        **common,
    ) -> None:
        super().__init__(strengths, **common)
        if min(self.strengths) < 0:
            raise ValueError(f"adv_train: iterations must be >= 0, got {self.strengths}")
        self.eps, self.batch_size = float(eps), int(batch_size)
        self.optimizer = optimizer or default_optimizer()

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        L.seed_everything(self.seed, workers=True)
        iterations = int(max(self.strengths))
        if len(data.train) < self.batch_size:
            raise ValueError(f"adv_train: {len(data.train)} attacker images cannot fill a batch of {self.batch_size}")
        # reshuffled passes over the attacker's images, exactly `iterations` full batches
        sampler = RandomSampler(data.train, num_samples=max(iterations, 1) * self.batch_size,
                                generator=torch.Generator().manual_seed(self.seed))
        loader = DataLoader(data.train, batch_size=self.batch_size, sampler=sampler, drop_last=True)
        module = FGSMTrainModule(copy.deepcopy(model), self.optimizer, self.eps, tuple(ctx.datamodule.input_range))
        models = train_with_snapshots(module, loader, ctx, f"attack_{self.name}", [int(s) for s in self.strengths], by="step")
        for strength in self.strengths:
            yield strength, ModuleSuspect(models[int(strength)], self.suspect_name(strength))
