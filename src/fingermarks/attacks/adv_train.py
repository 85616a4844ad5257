"""AT: the paper's FGSM adversarial training of the stolen model (paper 5.2.3, after Wang and Chang):
270 iterations; each iteration crafts 128 new FGSM examples and adds them to the training set, where
they stay. Axis: the perturbation budget eps (input units, pixels in [0, 1]).

One iteration, from the current model: the next 128 attacker images (reshuffled passes) are turned
into FGSM examples and appended to the adversarial set; one optimiser step is then taken on those
128 clean images plus 128 examples drawn at random from the whole adversarial set so far (old
examples are replayed, new ones join it). Every eps is its own run from the victim.
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from fingermarks.attacks.base import Attack, AttackerData, train_with_snapshots
from fingermarks.attacks.module import AttackModule
from fingermarks.context import RunContext
from fingermarks.errors import ConfigError
from fingermarks.perturbations import fgsm
from fingermarks.suspects import ModuleSuspect


class AccumulatingFGSM:
    """The batch maker of the paper's recipe: FGSM examples of each clean batch join a growing
    adversarial set; the trained batch is the clean batch plus as many examples drawn from that set."""

    def __init__(self, eps: float, input_range: tuple[float, float], seed: int) -> None:
        self.eps, self.input_range = eps, input_range
        self.generator = torch.Generator().manual_seed(seed)
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []

    def __len__(self) -> int:
        return sum(len(b) for b in self.y)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.append(fgsm(model, x, y, self.eps, self.input_range).cpu())
        self.y.append(y.detach().cpu())
        pool_x, pool_y = torch.cat(self.x), torch.cat(self.y)
        pick = torch.randint(len(pool_y), (len(y),), generator=self.generator)
        return torch.cat([x, pool_x[pick].to(x.device)]), torch.cat([y, pool_y[pick].to(y.device)])


class AdvTrain(Attack):
    """`iterations` optimiser steps of `batch_size` (128) new FGSM examples each; `eps` on the axis
    (0.1 is the documented default for MNIST-like data; 8/255 is the CIFAR convention)."""

    name = "adv_train"
    axis = "eps"

    def __init__(self, strengths: Sequence[float], iterations: int = 270, **common) -> None:
        common.setdefault("batch_size", 128)
        super().__init__(strengths, **common)
        if min(self.strengths) < 0:
            raise ConfigError(f"{self.name}: eps must be >= 0, got {self.strengths}")
        if int(iterations) < 1:
            raise ConfigError(f"{self.name}: iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        if len(data.train) < self.batch_size:
            raise ConfigError(f"{self.name}: {len(data.train)} attacker images cannot fill a batch of {self.batch_size}")
        input_range = tuple(ctx.datamodule.input_range)
        for eps in self.strengths:
            L.seed_everything(self.seed, workers=True)
            # reshuffled passes over the attacker's images: exactly `iterations` full batches
            sampler = RandomSampler(data.train, num_samples=self.iterations * self.batch_size,
                                    generator=torch.Generator().manual_seed(self.seed))
            loader = DataLoader(data.train, batch_size=self.batch_size, sampler=sampler, drop_last=True)
            maker = AccumulatingFGSM(float(eps), input_range, self.seed)
            module = AttackModule(copy.deepcopy(model), self.optimizer, make_batch=maker)
            trained = train_with_snapshots(module, loader, ctx, f"attack_{self.name}_{eps:g}", [self.iterations],
                                           by="step")[self.iterations]
            yield eps, ModuleSuspect(trained, self.suspect_name(eps))
