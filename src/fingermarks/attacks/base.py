"""What every removal attack shares: the strength axis, the attacker's own data, and cumulative training.

An attack sees only a model and the attacker's data, never the key or the watermarking method,
so it works against any `WatermarkMethod`. `run` yields the attacked suspect at every point of
the strength axis, from the weakest to the strongest; training attacks run once and are
snapshotted at the requested epochs (or iterations), so epochs 1, 2, 5 are one run of 5 epochs.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fingermarks.context import RunContext
from fingermarks.suspects import Suspect


@dataclass
class AttackerData:
    """The attacker's own images, disjoint from the owner's trigger sources.

    `train`: labelled images the attacker trains on (a subset of the owner's training pool, as in
    the paper's threat model); `test`: held-out images on which the attacked model's clean
    accuracy is measured; `indices`: where `train` sits in `datamodule.train_set`.
    """

    train: Dataset
    test: Dataset
    indices: torch.Tensor | None = None


def attacker_data(datamodule, size: int, exclude: Sequence[int], seed: int) -> AttackerData:
    """`size` seeded random training images, none of them at an index in `exclude` (the trigger sources)."""
    datamodule.setup("fit")
    pool = datamodule.train_set
    banned = torch.zeros(len(pool), dtype=torch.bool)
    banned[torch.as_tensor(list(exclude), dtype=torch.long)] = True
    allowed = (~banned).nonzero().flatten()
    if not 0 <= size <= len(allowed):
        raise ValueError(f"attacker data of {size} images requested, but only {len(allowed)} training images are not trigger sources")
    order = torch.randperm(len(allowed), generator=torch.Generator().manual_seed(seed))
    indices = allowed[order[:size]].sort().values
    return AttackerData(train=pool.subset(indices), test=datamodule.test_set, indices=indices)


class Attack(ABC):
    """A removal attack with a strength axis.

    `strengths`: the points of the axis to evaluate; `default`: the documented strength a real
    attacker would use (must be one of `strengths`, so every curve measures it); `data_size`: how
    many images the attacker owns (see `attacker_data`); `seed`: the attacker's randomness.
    """

    name: ClassVar[str]
    axis: ClassVar[str]  # "epochs" | "rate" | "std" | "iterations" | "bits"
    #: True where a smaller value on the axis is the stronger attack (fewer weight bits)
    descending: ClassVar[bool] = False

    def __init__(self, strengths: Sequence[float], default: float | None = None, data_size: int = 2000, seed: int = 0) -> None:
        if not strengths:
            raise ValueError(f"{self.name}: strengths must not be empty")
        self.strengths = sorted(strengths, reverse=self.descending)
        if default is not None and default not in self.strengths:
            raise ValueError(f"{self.name}: default strength {default} is not on the axis {self.strengths}")
        self.default, self.data_size, self.seed = default, int(data_size), int(seed)

    @abstractmethod
    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, Suspect]]:
        """Yield (strength, attacked suspect) for each point of `strengths`, weakest first.

        The suspect exposes `.model`; `model` itself is never modified (attacks work on a deep copy).
        """

    def suspect_name(self, strength: float) -> str:
        return f"{self.name}@{self.axis}={strength}"


class Snapshots(L.Callback):
    """Copies the model being trained after the requested numbers of epochs (or optimiser steps)."""

    def __init__(self, points: Sequence[int], by: str = "epoch") -> None:
        if by not in ("epoch", "step"):
            raise ValueError(f"snapshots are taken by 'epoch' or 'step', not {by!r}")
        self.points, self.by = set(int(p) for p in points), by
        self.models: dict[int, nn.Module] = {}

    def take(self, done: int, model: nn.Module) -> None:
        if done in self.points and done not in self.models:
            self.models[done] = copy.deepcopy(model).eval()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.by == "epoch":
            self.take(trainer.current_epoch + 1, pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.by == "step":
            self.take(trainer.global_step, pl_module.model)


def train_with_snapshots(
    module: L.LightningModule, loader: DataLoader, ctx: RunContext, stage: str, points: Sequence[int], by: str = "epoch"
) -> dict[int, nn.Module]:
    """Train `module` (holding `.model`) once up to the largest point; the model at every point.

    Point 0 is the model as it enters training (after any re-initialisation).
    """
    snapshots = Snapshots(points, by)
    snapshots.take(0, module.model)
    last = max(int(p) for p in points)
    if last > 0:
        limits = {"max_epochs": last} if by == "epoch" else {"max_epochs": -1, "max_steps": last}
        trainer = ctx.trainer_factory(**limits, logger=ctx.logger_factory(stage) or False, callbacks=[snapshots])
        module.train()  # a copy of a deployed (eval-mode) model: Lightning does not switch it back
        trainer.fit(module, train_dataloaders=loader)
    missing = sorted(set(int(p) for p in points) - set(snapshots.models))
    if missing:
        raise RuntimeError(f"{stage}: training stopped before {by}s {missing}")
    return snapshots.models
