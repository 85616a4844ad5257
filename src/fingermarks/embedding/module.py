"""Per-user watermark embedding: a LightningModule fine-tuning a copy of the host, fed by the callback's state.

Neither the module nor the data saves hyperparameters or registers tensors of its own: a user's
checkpoint must hold no trigger or target (the owner's secret), only the model and the callback's numbers.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from fingermarks.embedding.dynamic_ratio import DynamicRatio
from fingermarks.errors import EmbeddingError
from fingermarks.perturbations import fgsm
from fingermarks.training.classifier import optimizers

log = logging.getLogger(__name__)


def distillation(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term, T^2 KL(softmax(teacher / T) || softmax(logits / T)), summed over the rows whose
    teacher logits are finite (the clean images; trigger rows carry NaN) and divided by the batch size, so it
    weighs each clean image as the cross-entropy does."""
    return grouped_distillation(logits, teacher, logits.new_ones(len(logits)), temperature)


def grouped_distillation(logits: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """`distillation` of each batch of a stack, (..., B, classes) logits and teacher logits with (..., B) row weights
    (0: padding): one term per batch, over its rows with weight and a finite teacher, divided by its weighted row count
    (the stacked heads' users, embedding/stacked.py)."""
    keep = teacher.isfinite().all(-1) & (weights > 0)
    t = temperature
    target = F.log_softmax(torch.where(keep.unsqueeze(-1), teacher, 0.0).float() / t, -1)
    kl = (target.exp() * (target - F.log_softmax(logits.float() / t, -1))).sum(-1)
    return (kl * keep).sum(-1) * t * t / weights.sum(-1).clamp_min(1)


class EmbeddingModule(L.LightningModule):
    """Cross-entropy fine-tuning on the mixed epoch data (triggers, neighbours, clean images)."""

    def __init__(self, model: nn.Module, num_classes: int, optimizer: Callable, anchor: float = 0.0,
                 robust_eps: float = 0.0, input_range: tuple[float, float] = (0.0, 1.0),
                 scheduler: Callable | None = None, head: tuple[nn.Module, nn.Module] | None = None,
                 distill: float = 0.0, distill_temperature: float = 2.0,
                 pruned_triggers: tuple[torch.Tensor, torch.Tensor] | None = None, prune_weights_max: float = 0.9,
                 term_seed: int = 0, dormant: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float] | None = None) -> None:
        super().__init__()
        if pruned_triggers is not None and (head is None or not 0.0 < prune_weights_max < 1.0):
            raise ValueError("pruned_triggers needs the head-only embedding and prune_weights_max in (0, 1)")
        # Optional (head-only): each step also trains every trigger (trunk output, target) through the head with a
        # random share, up to prune_weights_max, of each dense layer's smallest weights held at zero, so the ID sits in
        # the weights that magnitude pruning keeps. A plain attribute: never saved with the model (the owner's secret).
        self._pruned_triggers, self.prune_weights_max = pruned_triggers, prune_weights_max
        # made on first use, in the process that trains: a torch.Generator held here would be pickled to ddp_spawn's
        # workers through shared memory, which fails ("unable to resize file")
        self._term_seed, self._term_generator = term_seed, None
        # Optional (head-only): `dormant` = (clean trunk outputs, trigger trunk outputs, unit indices, weight, margin):
        # each step also pushes the pre-activations of those hidden units below -margin on a batch of clean images and
        # above +margin on the triggers, so the units stay silent on clean data (a fine-tuning thief's clean gradients
        # never reach them) and fire on the triggers, whose targets they can then carry.
        self._dormant = dormant
        if distill < 0 or distill_temperature <= 0:
            raise ValueError(f"need distill >= 0 and distill_temperature > 0, got {distill}, {distill_temperature}")
        # Optional distillation of the host on the clean images (EmbeddingData's `teacher`): their cross-entropy on
        # the label plus `distill` times the KL to the host's outputs at temperature T, which holds the copy to the
        # host's whole output on each clean image, not only its top label
        self.distill, self.distill_temperature = distill, distill_temperature
        if robust_eps < 0:
            raise ValueError(f"need robust_eps >= 0, got {robust_eps}")
        if head is not None and robust_eps > 0:
            raise ValueError("robust_eps (FGSM on the input) needs the whole model trained: set method.embedding.train=all")
        self.model = model
        # Head-only embedding (embedding/head.py): `head` = (trunk, head) of `model`, the batches hold the trunk's
        # outputs and only the head trains. A plain tuple, so the modules are not registered twice.
        self._split = head
        # Optional adversarial embedding: each batch is also trained as its FGSM examples of budget
        # robust_eps (clean images keep their label, triggers their user's target), so the copy a user
        # gets is already adversarially trained and a thief's adversarial training has little left to move.
        self.robust_eps, self.input_range = robust_eps, input_range
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        # Optional L2-SP: (anchor / 2) * ||w - w_host||^2 pulls the weights back towards the host's (clean
        # images the host already fits give little gradient). Off by default: on mnist5k it cost epochs
        # without lowering the accuracy drop (benchmarks/results/tune_embedding.jsonl).
        self.anchor = anchor
        self._start = [p.detach().clone() for p in model.parameters()] if anchor > 0 else []

    def _generator(self) -> torch.Generator:
        """The generator of the optional terms' random draws (pruning rates, clean rows), seeded once per fit."""
        if self._term_generator is None:
            self._term_generator = torch.Generator().manual_seed(self._term_seed)
        return self._term_generator

    def on_fit_start(self) -> None:
        self._start = [w.to(self.device) for w in self._start]

    def on_train_epoch_start(self) -> None:
        if self._split is not None:
            self._split[0].eval()  # Lightning put the whole model in train mode; the trunk's statistics stay the host's

    def trained(self) -> nn.Module:
        """The part of the model that trains: the whole model, or its head."""
        return self.model if self._split is None else self._split[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y, *teacher = batch
        if self.robust_eps > 0:
            x, y = torch.cat([x, fgsm(self.model, x, y, self.robust_eps, self.input_range)]), torch.cat([y, y])
            teacher = [torch.cat([t, torch.full_like(t, float("nan"))]) for t in teacher]
        logits = self.trained()(x)
        loss = F.cross_entropy(logits, y)
        if teacher and self.distill > 0:
            loss = loss + self.distill * distillation(logits, teacher[0], self.distill_temperature)
        if self._pruned_triggers is not None:
            from fingermarks.embedding.head import magnitude_pruned_forward

            features, targets = (t.to(logits.device) for t in self._pruned_triggers)
            rate = float(torch.rand((), generator=self._generator())) * self.prune_weights_max
            loss = loss + F.cross_entropy(magnitude_pruned_forward(self.trained(), features, rate), targets)
        if self._dormant is not None:
            from fingermarks.embedding.head import hidden_layer

            clean, triggers, units, weight, margin = self._dormant
            rows = torch.randint(len(clean), (len(x),), generator=self._generator())
            layer, units = hidden_layer(self.trained()), units.to(logits.device)
            silent = (layer(clean[rows].to(logits.device))[:, units] + margin).clamp_min(0).mean()
            awake = (margin - layer(triggers.to(logits.device))[:, units]).clamp_min(0).mean()
            loss = loss + weight * (silent + awake)
        self.log("embed/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if self.anchor > 0:
            drift = sum(((w - w0) ** 2).sum() for w, w0 in zip(self.model.parameters(), self._start) if w.requires_grad)
            loss = loss + 0.5 * self.anchor * drift
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc.update(self.model(x), y)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        return optimizers(self.trained().parameters(), self.optimizer_factory, self.scheduler_factory)


class EmbeddingData(L.LightningDataModule):
    """Builds each epoch's training set from the callback's current state.

    Clean images: a fresh random fraction p of the owner's training set (clean labels),
    drawn from a generator seeded by (seed, epoch) so a run is reproducible. Triggers
    (and their neighbours) are repeated `trigger_repeat` times so every epoch sees them
    in several batches. With `noise_copies` > 0, every trigger (matched or not) also comes as that many
    copies under Gaussian noise of a std drawn uniformly from [0, noise_std], with its target label: a
    deployment that adds noise to its queries then still answers the target (the neighbourhood DeepFool
    covers is only the nearest boundary's direction). With `clean_per_trigger` set, an epoch draws at most
    that many clean images per trigger sample (and at least one batch): once only a few triggers are left
    to train, an epoch is a few batches instead of a pass over p of the training set.

    Head-only embedding (embedding/head.py): the callback's triggers and neighbours are the trunk's outputs,
    `clean` holds the trunk's outputs for the whole training set with its labels (computed once per host), and
    the noisy copies are drawn around `trigger_images` and passed through `encode` (the trunk); every part of an
    epoch is drawn exactly as the images would be. With `prune_copies` > 0 (head-only only), every trigger also comes
    as that many copies of its trunk output with a random share (up to `prune_max`) of the least active channels of
    `channel_order` zeroed (`head.pruned_copies`), with its target.
    """

    def __init__(self, datamodule, ratio: DynamicRatio, *, seed: int, batch_size: int = 64, trigger_repeat: int = 4,
                 noise_copies: int = 0, noise_std: float = 0.0, clean_per_trigger: float | None = None,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 clean: tuple[torch.Tensor, torch.Tensor] | None = None, trigger_images: torch.Tensor | None = None,
                 teacher: torch.Tensor | None = None, prune_copies: int = 0, prune_max: float = 0.9,
                 channel_order: torch.Tensor | None = None) -> None:
        super().__init__()
        if prune_copies < 0 or not 0.0 <= prune_max < 1.0:
            raise ValueError(f"need prune_copies >= 0 and prune_max in [0, 1), got {prune_copies}, {prune_max}")
        if prune_copies and (encode is None or channel_order is None):
            raise ValueError("prune_copies needs the head-only embedding (method.embedding.train=head) and the trunk's channel order")
        self.prune_copies, self.prune_max, self.channel_order = prune_copies, prune_max, channel_order
        if noise_copies < 0 or noise_std < 0:
            raise ValueError(f"need noise_copies >= 0 and noise_std >= 0, got {noise_copies}, {noise_std}")
        if clean_per_trigger is not None and clean_per_trigger < 0:
            raise ValueError(f"need clean_per_trigger >= 0 (or null), got {clean_per_trigger}")
        self.clean_per_trigger = clean_per_trigger
        self.base, self.ratio = datamodule, ratio
        self.seed, self.batch_size, self.trigger_repeat = seed, batch_size, trigger_repeat
        self.noise_copies, self.noise_std = noise_copies, noise_std
        if (encode is None) != (trigger_images is None) or (encode is not None and clean is None):
            raise ValueError("head-only embedding needs `encode`, `clean` and `trigger_images` (the trunk, its outputs, the images)")
        if teacher is not None and clean is None:
            raise ValueError("`teacher` (the host's logits per clean image) needs `clean`, the images they belong to")
        if teacher is not None and len(teacher) != len(clean[0]):
            raise ValueError(f"`teacher` has {len(teacher)} rows for {len(clean[0])} clean images")
        self.encode, self.clean, self.teacher = encode, clean, teacher
        self.trigger_images = ratio.triggers if trigger_images is None else trigger_images

    def setup(self, stage: str | None = None) -> None:
        self.base.setup(stage)  # idempotent; a base not yet set up has no train/val sets to draw from

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        train = self.base.train_set
        x, y = self.ratio.trigger_batch()
        noisy = self.noise_copies * len(self.trigger_images) if self.noise_copies and self.noise_std > 0 else 0
        count = int(round(self.ratio.p * len(train)))
        if self.clean_per_trigger is not None:
            count = min(count, max(int(round(self.clean_per_trigger * (self.trigger_repeat * len(x) + noisy))), self.batch_size))
        chosen = torch.randperm(len(train), generator=g)[:count]
        if self.clean is None:
            parts = [Subset(train, chosen.tolist())]
        else:
            parts = [TensorDataset(self.clean[0][chosen], self.clean[1][chosen], *self._teacher(chosen))]
        if len(x):
            parts.append(TensorDataset(x.repeat(self.trigger_repeat, *[1] * (x.dim() - 1)), y.repeat(self.trigger_repeat),
                                       *self._teacher(self.trigger_repeat * len(x))))
        if noisy:
            images, targets = self._noisy_triggers(g)
            parts.append(TensorDataset(images if self.encode is None else self.encode(images), targets, *self._teacher(len(targets))))
        if self.prune_copies:
            from fingermarks.embedding.head import pruned_copies

            pruned = pruned_copies(self.ratio.triggers, self.channel_order, self.prune_copies, self.prune_max, g)
            targets = self.ratio.targets.repeat(self.prune_copies)
            parts.append(TensorDataset(pruned, targets, *self._teacher(len(targets))))
        return DataLoader(ConcatDataset(parts), batch_size=self.batch_size, shuffle=True, generator=g)

    def _teacher(self, rows: torch.Tensor | int) -> list[torch.Tensor]:
        """The host's logits for the chosen clean images, or NaN rows (no teacher) for `rows` trigger samples; nothing
        without a teacher."""
        if self.teacher is None:
            return []
        if isinstance(rows, int):
            return [self.teacher.new_full((rows, self.teacher.shape[1]), float("nan"))]
        return [self.teacher[rows]]

    def _noisy_triggers(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trigger_images.repeat(self.noise_copies, *[1] * (self.trigger_images.dim() - 1))
        std = torch.rand(len(x), generator=g).mul(self.noise_std).view(-1, *[1] * (x.dim() - 1))
        noisy = (x + std * torch.randn(x.shape, generator=g)).clamp(*self.base.input_range)
        return noisy, self.ratio.targets.repeat(self.noise_copies)

    def val_dataloader(self) -> DataLoader:
        return self.base.val_dataloader()


def embedding_outcome(user: str, matched: int, n: int, epochs: int, *, allow_partial: bool, settings: str) -> dict[str, Any]:
    """`all_matched` and `matched` for an embedding's info dict, checked in the caller's process.

    A model that misses triggers carries a wrong ID: an `EmbeddingError` naming what to change
    (`settings`), unless `allow_partial`, which keeps the model with a warning.
    """
    if matched == n:
        return {"all_matched": True, "matched": matched}
    if not allow_partial:
        raise EmbeddingError(
            f"embedding of user {user!r} ended after {epochs} epochs with {matched} of {n} triggers matched; "
            f"raise {settings}, or set method.embedding.allow_partial=true to keep a partial embedding"
        )
    log.warning("user %s: partial embedding, %d of %d triggers matched after %d epochs", user, matched, n, epochs)
    return {"all_matched": False, "matched": matched}
