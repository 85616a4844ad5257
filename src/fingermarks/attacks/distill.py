"""Model extraction (beyond the paper): a fresh student trained only on the victim's top-1 labels
for the attacker's images; axis: student epochs (cumulative)."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import lightning as L
from torch import nn
from torch.utils.data import TensorDataset

from fingermarks.attacks.base import Attack, AttackerData, labelled_tensors, train_with_snapshots
from fingermarks.attacks.module import AttackModule
from fingermarks.context import RunContext
from fingermarks.errors import ConfigError
from fingermarks.metrics import predict_labels
from fingermarks.models import build_model
from fingermarks.suspects import ModuleSuspect


def fresh_student(student: Callable[..., nn.Module] | None, victim: nn.Module, ctx: RunContext) -> nn.Module:
    """A freshly initialised student: the victim's own architecture (None), or a partial model constructor
    completed with the data's class count, input shape and normalisation."""
    if student is None:
        return build_model(victim.arch_name, **victim.arch_kwargs)
    dm = ctx.datamodule
    return student(num_classes=dm.num_classes, input_shape=list(dm.input_shape), mean=list(dm.mean), std=list(dm.std))


class Distill(Attack):
    """`student`: None for the victim's own architecture, freshly initialised; or a partial model
    constructor (Hydra `_partial_: true`) completed with the data's class count, input shape and
    normalisation. The victim answers each attacker image once, with its top-1 label only."""

    name = "distill"
    axis = "epochs"

    def __init__(self, strengths: Sequence[int], student: Callable[..., nn.Module] | None = None, **common) -> None:
        super().__init__(strengths, **common)
        if min(self.strengths) < 0:
            raise ConfigError(f"{self.name}: epochs must be >= 0, got {self.strengths}")
        self.student = student

    def make_student(self, victim: nn.Module, ctx: RunContext) -> nn.Module:
        return fresh_student(self.student, victim, ctx)

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        L.seed_everything(self.seed, workers=True)
        x = labelled_tensors(data.train)[0]
        y = predict_labels(model, x)
        student = self.make_student(model, ctx)
        models = train_with_snapshots(AttackModule(student, self.optimizer), self.loader(TensorDataset(x, y)), ctx,
                                      f"attack_{self.name}", [int(s) for s in self.strengths])
        for strength in self.strengths:
            yield strength, ModuleSuspect(models[int(strength)], self.suspect_name(strength))
