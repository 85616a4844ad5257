"""WP: global L1 magnitude pruning of every Conv2d/Linear weight, made permanent (paper 5.2.3)."""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import lightning as L
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader

from fingermarks.attacks.base import Attack, AttackerData
from fingermarks.attacks.finetune import OptimizerFactory, default_optimizer
from fingermarks.attacks.ftal import FTALModule
from fingermarks.context import RunContext
from fingermarks.suspects import ModuleSuspect


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every convolution and linear layer: what magnitude pruning compresses."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def zero_fraction(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable layers."""
    weights = [m.weight.detach() for m, _ in prunable(model)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


class Prune(Attack):
    """Each rate starts from the unpruned victim: the smallest-|w| fraction `rate` of all weights
    (one global ranking across layers) is zeroed. With `finetune_epochs` > 0 the pruned model is
    then fine-tuned (all layers, masks held so pruned weights stay zero) before the masks are removed."""

    name = "prune"
    axis = "rate"

    def __init__(
        self,
        strengths: Sequence[float],
        finetune_epochs: int = 0,
        optimizer: OptimizerFactory | None = None,
        batch_size: int = 64,
        **common,
    ) -> None:
        super().__init__(strengths, **common)
        if not all(0.0 <= r < 1.0 for r in self.strengths):
            raise ValueError(f"prune: rates must be in [0, 1), got {self.strengths}")
        self.finetune_epochs = int(finetune_epochs)
        self.optimizer = optimizer or default_optimizer()
        self.batch_size = batch_size

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        for rate in self.strengths:
            pruned = copy.deepcopy(model)
            layers = prunable(pruned)
            prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=float(rate))
            if self.finetune_epochs > 0:
                self._finetune(pruned, data, ctx, rate)
            for module, param in layers:
                prune.remove(module, param)
            yield rate, ModuleSuspect(pruned.eval(), self.suspect_name(rate))

    def _finetune(self, pruned: nn.Module, data: AttackerData, ctx: RunContext, rate: float) -> None:
        L.seed_everything(self.seed, workers=True)
        loader = DataLoader(data.train, batch_size=self.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(self.seed))
        # the pruning hooks re-apply the masks in every forward, so fine-tuning cannot revive pruned weights;
        # no snapshots here: a model still carrying its masks cannot be deep-copied
        trainer = ctx.trainer_factory(max_epochs=self.finetune_epochs, callbacks=[],
                                      logger=ctx.logger_factory(f"attack_{self.name}_{rate}") or False)
        module = FTALModule(pruned, self.optimizer).train()  # the victim copy arrives in eval mode
        trainer.fit(module, train_dataloaders=loader)
