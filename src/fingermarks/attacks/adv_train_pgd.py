"""Adversarial training with PGD, as the Watermark-Robustness-Toolbox runs it (`adversarial_training`,
after Madry et al.): each epoch, PGD examples (L-inf, step 0.01, 40 steps) of a share of the
attacker's images are crafted with the current model and added to that epoch's training data with
their true labels; 5 epochs. Axis: the budget eps (input units, pixels in [0, 1]).

The WRT crafts 1,000 examples per epoch at eps 0.01, 0.1 and 0.25 together (CIFAR-10); here every
eps is its own run from the victim and `adv_fraction` of the attacker's images are crafted per epoch.
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from fingermarks.attacks.base import Attack, AttackerData, labelled_tensors, train_with_snapshots
from fingermarks.attacks.module import AttackModule
from fingermarks.context import RunContext
from fingermarks.errors import ConfigError
from fingermarks.perturbations import pgd
from fingermarks.suspects import ModuleSuspect


class PGDTrainModule(AttackModule):
    """Serves each epoch's training data itself: the clean images plus fresh PGD examples of a
    seeded `adv_count` of them, crafted with the model as it is at the start of the epoch."""

    def __init__(self, model: nn.Module, attack: "AdvTrainPGD", data: AttackerData, eps: float,
                 input_range: tuple[float, float]) -> None:
        super().__init__(model, attack.optimizer)
        self.attack, self.data, self.eps, self.input_range = attack, data, eps, input_range
        self.x, self.y = labelled_tensors(data.train)
        self.generator = torch.Generator().manual_seed(attack.seed)

    def train_dataloader(self):
        count = max(1, round(self.attack.adv_fraction * len(self.y)))
        pick = torch.randperm(len(self.y), generator=self.generator)[:count]
        adv = torch.cat([pgd(self.model, self.x[pick[i : i + 256]], self.y[pick[i : i + 256]], self.eps,
                             self.attack.eps_step, self.attack.steps, self.input_range)
                         for i in range(0, count, 256)])
        epoch = ConcatDataset([self.data.train, TensorDataset(adv, self.y[pick])])
        return self.attack.loader(epoch)


class AdvTrainPGD(Attack):
    name = "adv_train_pgd"
    axis = "eps"

    def __init__(self, strengths: Sequence[float], epochs: int = 5, eps_step: float = 0.01, steps: int = 40,
                 adv_fraction: float = 0.5, **common) -> None:
        super().__init__(strengths, **common)
        if min(self.strengths) < 0:
            raise ConfigError(f"{self.name}: eps must be >= 0, got {self.strengths}")
        if not 0.0 < float(adv_fraction) <= 1.0:
            raise ConfigError(f"{self.name}: adv_fraction must be in (0, 1], got {adv_fraction}")
        self.epochs, self.eps_step, self.steps, self.adv_fraction = int(epochs), float(eps_step), int(steps), float(adv_fraction)

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        input_range = tuple(ctx.datamodule.input_range)
        for eps in self.strengths:
            L.seed_everything(self.seed, workers=True)
            module = PGDTrainModule(copy.deepcopy(model), self, data, float(eps), input_range)
            trained = train_with_snapshots(module, None, ctx, f"attack_{self.name}_{eps:g}", [self.epochs],
                                           reload_dataloaders_every_n_epochs=1)[self.epochs]
            yield eps, ModuleSuspect(trained, self.suspect_name(eps))
