"""The one supervised LightningModule every training attack uses (fine-tuning, pruning with
fine-tuning, adversarial training, distillation, collusion with fine-tuning).

It is the host's `ClassifierModule` (cross-entropy, the same metric and loss logging), with two
hooks an attack needs: train only one sub-module (FTLL), and turn each clean batch into the batch
actually trained on (adversarial training adds its adversarial examples there).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fingermarks.attacks.base import OptimizerFactory
from fingermarks.training.classifier import ClassifierModule, optimizers

#: (model, x, y) -> (x', y'): the batch to train on, made from the clean batch
BatchMaker = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class AttackModule(ClassifierModule):
    """Cross-entropy training of a copy of a victim on the attacker's labelled batches.

    `train_only`: the name of the only sub-module that trains (e.g. "classifier"); every other
    parameter is frozen *and* kept in eval mode, so BatchNorm statistics do not drift either.
    `make_batch`: builds the trained batch from the clean one (None: the clean batch).
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, train_only: str | None = None,
                 make_batch: BatchMaker | None = None) -> None:
        super().__init__(model, int(model.num_classes), optimizer)
        self.train_only, self.make_batch = train_only, make_batch
        if train_only is not None:
            keep = self.model.get_submodule(train_only)
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in keep.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> "AttackModule":
        super().train(mode)
        if self.train_only is not None:
            self.model.eval()
            self.model.get_submodule(self.train_only).train(mode)
        return self

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.make_batch is not None:
            x, y = self.make_batch(self.model, x, y)
        return self._step((x, y), self.train_acc, "train")

    def configure_optimizers(self):
        return optimizers([p for p in self.model.parameters() if p.requires_grad], self.optimizer_factory, self.scheduler_factory)
