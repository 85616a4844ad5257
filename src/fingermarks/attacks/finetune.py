"""Fine-tuning attacks (FTAL, FTLL, RTAL): one LightningModule, subclasses choose what trains."""

from __future__ import annotations

import copy
import functools
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fingermarks.attacks.base import Attack, AttackerData, train_with_snapshots
from fingermarks.context import RunContext
from fingermarks.suspects import ModuleSuspect

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def default_optimizer() -> OptimizerFactory:
    """Adam at 1e-3: the usual fine-tuning step of an attacker with no access to the owner's recipe."""
    return functools.partial(torch.optim.Adam, lr=1e-3)


class FineTuneModule(L.LightningModule):
    """Cross-entropy training of `model` on labelled batches; `prepare` and `trainable` are the hooks."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.prepare()

    def prepare(self) -> None:
        """Change the copy before training starts (freeze, re-initialise); nothing by default."""

    def trainable(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("attack/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(list(self.trainable()))


class FineTuneAttack(Attack):
    """Train a copy of the victim on the attacker's labelled images; axis: epochs (cumulative)."""

    axis = "epochs"
    module: ClassVar[type[FineTuneModule]]

    def __init__(
        self,
        strengths: Sequence[int],
        optimizer: OptimizerFactory | None = None,
        batch_size: int = 64,
        **common,
    ) -> None:
        super().__init__(strengths, **common)
        if min(self.strengths) < 0:
            raise ValueError(f"{self.name}: epochs must be >= 0, got {self.strengths}")
        self.optimizer = optimizer or default_optimizer()
        self.batch_size = batch_size

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        L.seed_everything(self.seed, workers=True)
        module = self.module(copy.deepcopy(model), self.optimizer)
        loader = DataLoader(data.train, batch_size=self.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(self.seed))
        models = train_with_snapshots(module, loader, ctx, f"attack_{self.name}", [int(s) for s in self.strengths])
        for strength in self.strengths:
            yield strength, ModuleSuspect(models[int(strength)], self.suspect_name(strength))
