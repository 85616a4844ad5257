"""Model extraction with a query budget (the thief of the UAP benchmark, evidence.piracy.distill): for
every budget on the axis, a FRESH student trained on the victim's answers to that many queries of the
attacker's own images; top-1 labels (`hard`, what an HTTP endpoint of this project answers) or
probabilities (`soft`, what a model file gives). A budget above the attacker's images is filled with
randomly shifted copies of them (each one more query)."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import lightning as L
from torch import nn

from fingermarks.attacks.base import Attack, AttackerData, labelled_tensors
from fingermarks.attacks.distill import fresh_student
from fingermarks.context import RunContext
from fingermarks.errors import ConfigError
from fingermarks.suspects import ModuleSuspect

LABELS = ("hard", "soft")


class Extract(Attack):
    """`strengths`: query budgets; `labels`: hard | soft; `student`: None for the victim's own architecture,
    else a partial model constructor (`attack/student=<name>`, conf/attack/student/); `steps` Adam steps of
    `batch_size` queries at `lr` with cosine decay, whatever the budget (a budget buys data, not training)."""

    name = "extract"
    axis = "queries"

    def __init__(self, strengths: Sequence[int], labels: str = "hard", student: Callable[..., nn.Module] | None = None,
                 steps: int = 800, lr: float = 2e-3, **common) -> None:
        super().__init__(strengths, **common)
        if min(self.strengths) < 1:
            raise ConfigError(f"{self.name}: query budgets must be >= 1, got {self.strengths}")
        if labels not in LABELS:
            raise ConfigError(f"{self.name}: labels must be hard or soft, got {labels!r}")
        if int(steps) < 1 or float(lr) <= 0:
            raise ConfigError(f"{self.name}: steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
        self.labels, self.student, self.steps, self.lr = labels, student, int(steps), float(lr)

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, ModuleSuspect]]:
        from fingermarks.evidence.piracy import distill

        pool = labelled_tensors(data.train)[0]  # the attacker's own images; their true labels are never used
        for budget in self.strengths:
            L.seed_everything(self.seed, workers=True)  # every budget: the same thief, only the budget differs
            student, _ = distill(model, fresh_student(self.student, model, ctx), ctx.datamodule, pool, int(budget),
                                 self.labels, steps=self.steps, lr=self.lr, batch_size=self.batch_size, seed=self.seed)
            yield budget, ModuleSuspect(student, self.suspect_name(budget))
