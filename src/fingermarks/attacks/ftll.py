"""FTLL: fine-tune only the last layer (`model.classifier`) on the attacker's labelled images (paper 5.2.3)."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from fingermarks.attacks.finetune import FineTuneAttack, FineTuneModule
from fingermarks.models import last_layer


class FTLLModule(FineTuneModule):
    """Only the final linear layer trains; the rest is frozen *and* kept in eval mode, so its
    BatchNorm statistics do not drift either: the attacked model differs in the last layer only."""

    def prepare(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in last_layer(self.model).parameters():
            p.requires_grad_(True)

    def trainable(self) -> Iterable[nn.Parameter]:
        return last_layer(self.model).parameters()

    def train(self, mode: bool = True) -> "FTLLModule":
        super().train(mode)
        self.model.eval()
        last_layer(self.model).train(mode)
        return self


class FTLL(FineTuneAttack):
    name = "ftll"
    module = FTLLModule
