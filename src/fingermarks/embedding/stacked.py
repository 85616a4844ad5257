"""Several users' heads embedded in one run (`method.embedding.stack_users`): one step trains every user's head.

A head-only embedding (embedding/head.py) trains a few dense layers on the trunk's outputs. A step of one such head on
64 rows is a few milliseconds of arithmetic, and each user adds to it alike: Lightning's loop around every step, each
epoch's noisy trigger copies through the convolutional trunk, a DeepFool search per epoch. Here the heads of U users are
stacked (`torch.func.stack_module_state`) and run as one batched forward (`torch.vmap` over `functional_call`): a step
costs one loop's overhead plus U heads' arithmetic, the epoch's noisy copies are encoded once for the group, and one
DeepFool search covers every user (README "Stacked head embedding": on the idle CPU about what the users cost alone,
less on a loaded one).

Each user keeps its own dynamic ratio (`DynamicRatio`: its matched and active triggers, DeepFool neighbours and clean
fraction) and its own epoch data: its clean rows and its order are drawn from its own seed, as `EmbeddingData` draws
them. What the group shares: the noisy and pruned copies of the triggers (the same images for every user, each with
its own targets; drawn from the key's seed, so every group of the key trains on the same ones and the trunk encodes
them once, or with `copies_per: group` from the group's), the number of steps per epoch (the largest epoch among the users still
training, at the batch size; every user's epoch is cut into that many batches of near-equal size) and the dropout
stream. A user is therefore not bit-identical to its embedding alone or in another group: the same users, seeds and
key give the same models. A user whose triggers all hold (`done_prob`, or `DynamicRatio`'s plateau stop) stops where it
is: its rows leave the epoch (its head is not run) and its weights are restored after every later step (the
optimizer's momentum would move them otherwise); the run ends when every user is done.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fingermarks.embedding.deepfool import deepfool
from fingermarks.embedding.dynamic_ratio import DynamicRatio
from fingermarks.embedding.module import grouped_distillation
from fingermarks.training.classifier import optimizers


class StackedHeads(L.LightningModule):
    """U heads of one architecture as stacked parameters; a batch is (U, B, features) rows, (U, B) targets and
    (U, B) weights (0 for the padding of a user whose batch is shorter)."""

    def __init__(self, heads: list[nn.Module], optimizer, scheduler=None, distill: float = 0.0,
                 distill_temperature: float = 2.0, pruned_triggers: tuple[torch.Tensor, torch.Tensor] | None = None,
                 prune_weights_max: float = 0.9, term_seed: int = 0) -> None:
        super().__init__()
        if distill < 0 or distill_temperature <= 0:
            raise ValueError(f"need distill >= 0 and distill_temperature > 0, got {distill}, {distill_temperature}")
        if pruned_triggers is not None and not 0.0 < prune_weights_max < 1.0:
            raise ValueError(f"pruned_triggers needs prune_weights_max in (0, 1), got {prune_weights_max}")
        # the host's outputs on the clean rows, as EmbeddingModule's `distill` (a batch then carries their logits)
        self.distill, self.distill_temperature = distill, distill_temperature
        # EmbeddingModule's `pruned_triggers`: (the triggers' trunk outputs, (U, triggers) each user's targets), trained
        # every step through each user's head with a share, drawn uniformly from [0, prune_weights_max] (one draw per
        # step, from `term_seed`), of each of its Linear weight matrices' smallest weights held at zero
        self._pruned_triggers, self.prune_weights_max = pruned_triggers, prune_weights_max
        self._term_generator = torch.Generator().manual_seed(int(term_seed))
        from fingermarks.embedding.head import linear_weights

        self._pruned_names = frozenset(linear_weights(heads[0]))  # the weight matrices the term prunes
        if any(True for _ in heads[0].buffers()):
            raise ValueError("the stacked embedding trains heads without buffers (no batch norm after the trunk)")
        params, _ = torch.func.stack_module_state(heads)
        self.names = list(params)
        self.weights = nn.ParameterList([nn.Parameter(params[name]) for name in self.names])
        # the structure functional_call runs with each user's weights (a tuple: not a submodule, not optimised)
        self._structure = (copy.deepcopy(heads[0]).requires_grad_(False),)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.done = torch.zeros(len(heads), dtype=torch.bool)
        self._kept: list[torch.Tensor] = []  # the done users' weights, restored after every step

    @property
    def users(self) -> int:
        return len(self.done)

    def forward(self, x: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (U, B, classes) of rows (U, B, features): user u's rows through user u's head; with `users` (indices),
        x[i] goes through user users[i]'s head (the others cost nothing)."""
        everyone = users is None or (len(users) == self.users and bool((users == torch.arange(self.users, device=users.device)).all()))
        return self._run(dict(zip(self.names, self.weights if everyone else [w.index_select(0, users) for w in self.weights])), x)

    def _run(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """x[i] through the head whose weights are the i-th of each stacked tensor in `weights`."""
        structure = self._structure[0].train(self.training)  # not a submodule: its dropout follows this module's mode

        def one(params, rows):
            return torch.func.functional_call(structure, params, (rows,))

        return torch.vmap(one, randomness="different")(weights, x)

    def pruned_trigger_losses(self, users: torch.Tensor, rate: float) -> torch.Tensor:
        """Each of `users`' mean cross-entropy on its targets of the pruned-trigger term's triggers, through its head
        with the smallest share `rate` of each Linear weight matrix held at zero (embedding.head.keep_largest)."""
        from fingermarks.embedding.head import keep_largest

        features, targets = (t.to(self.device) for t in self._pruned_triggers)
        weights = {name: (keep_largest(w.index_select(0, users), rate) if name in self._pruned_names else w.index_select(0, users))
                   for name, w in zip(self.names, self.weights)}
        logits = self._run(weights, features.expand(len(users), *features.shape))
        return F.cross_entropy(logits.flatten(0, 1), targets[users].flatten(), reduction="none").view(len(users), -1).mean(1)

    def head_state(self, user: int) -> dict[str, torch.Tensor]:
        """User `user`'s head weights (copies), as its head's `state_dict` names them."""
        return {name: w[user].detach().clone() for name, w in zip(self.names, self.weights)}

    def freeze(self, users: torch.Tensor) -> None:
        """Users (a boolean mask) whose weights are final from now on."""
        self.done |= users.to(self.done.device)
        self._kept = [w.detach()[self.done].clone() for w in self.weights]

    def training_step(self, batch, batch_idx):
        x, y, w, users, *teacher = batch  # the rows of the users still training (`users`), in that order
        logits = self(x, users)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(w)
        losses = (ce * w).sum(1) / w.sum(1).clamp_min(1)  # each user's mean loss: its own gradient
        if teacher and self.distill > 0:
            losses = losses + self.distill * grouped_distillation(logits, teacher[0], w, self.distill_temperature)
        if self._pruned_triggers is not None:
            rate = float(torch.rand((), generator=self._term_generator)) * self.prune_weights_max
            losses = losses + self.pruned_trigger_losses(users.to(self.device), rate)
        self.log("embed/loss", losses.mean(), on_step=False, on_epoch=True, prog_bar=True)
        return losses.sum()

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._kept:
            done = self.done.to(self.weights[0].device)
            for w, kept in zip(self.weights, self._kept):
                w[done] = kept

    def configure_optimizers(self):
        # the optimizers of this project are elementwise (Adam, SGD): one over the stacked tensors is U separate ones.
        # Their fused kernel where they have one: the same update, and on the CPU a third of the foreach-less default's
        # time on U heads' weights
        factory = self.optimizer_factory
        func, given = getattr(factory, "func", factory), getattr(factory, "keywords", {})
        if "fused" in inspect.signature(func).parameters and "fused" not in given:
            factory = functools.partial(factory, fused=True)
        return optimizers(self.weights.parameters(), factory, self.scheduler_factory)


def _rows_forward(stacked: StackedHeads, owner: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """DeepFool's `rows_forward` over the rows of several users: row i (of rows grouped by user, in user order) goes
    through user owner[i]'s head. DeepFool treats rows independently, so one search covers every user's triggers."""

    def forward(points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        users = owner[rows]
        counts = torch.bincount(users, minlength=stacked.users)
        position = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[users]
        padded = points.new_zeros(stacked.users, int(counts.max()), *points.shape[1:]).index_put((users, position), points)
        return stacked(padded)[users, position]

    return forward


class _Steps(Dataset):
    """An epoch as its steps: step s is every training user's s-th batch, (U, B, ...) rows, (U, B) targets and (U, B)
    weights (B: the longest batch; a shorter one is padded with zero rows of weight 0), and the users' indices in the
    group. A user's rows are `pool[index[u]]`, in that order; a step gathers its own rows from the pool, so each row
    of the epoch is copied once (not cut, shuffled and cat per user: with the trunk's outputs as rows, those copies
    were a fifth of a group's time)."""

    def __init__(self, pool: torch.Tensor, index: list[torch.Tensor], targets: list[torch.Tensor], steps: int,
                 users: torch.Tensor, teacher_pool: torch.Tensor | None = None) -> None:
        width = max(math.ceil(len(t) / steps) for t in targets)
        self.index = torch.zeros(len(index), steps * width, dtype=torch.long)
        self.y = torch.zeros(len(index), steps * width, dtype=torch.long)
        self.w = torch.zeros(len(index), steps * width)
        for u, (rows, y) in enumerate(zip(index, targets)):
            # user u's rows cut into `steps` batches of near-equal size, each at the start of its step's slot
            for s, (rs, ys) in enumerate(zip(torch.tensor_split(rows, steps), torch.tensor_split(y, steps))):
                at = slice(s * width, s * width + len(ys))
                self.index[u, at], self.y[u, at], self.w[u, at] = rs, ys, 1.0
        # the host's logits per pool row (NaN where a row has none: triggers and their copies), or None
        self.pool, self.teacher_pool = pool, teacher_pool
        self.steps, self.width, self.users = steps, width, users

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        cut = slice(step * self.width, (step + 1) * self.width)
        index, padding = self.index[:, cut], self.w[:, cut] == 0
        x = self.pool[index]
        x[padding] = 0
        batch = (x, self.y[:, cut], self.w[:, cut], self.users)
        if self.teacher_pool is None:
            return batch
        t = self.teacher_pool[index]
        t[padding] = float("nan")
        return (*batch, t)


class StackedEmbeddingData(L.LightningDataModule):
    """Each epoch's data of every user of the group, from their ratios' state (see the module's docstring).

    `clean` = (trunk outputs of the owner's training images, labels); `encode` passes the noisy trigger images through
    the trunk; `seeds` are the users' seeds (their clean rows and order), `group_seed` the shared copies' seed. `copies`
    keeps each epoch's shared copies for the next group that draws them from the same seed (`embedding.copies_per: key`:
    every group of a key trains on the same copies, and the trunk encodes them once per key), or is None.
    """

    def __init__(self, ratios: list[DynamicRatio], clean: tuple[torch.Tensor, torch.Tensor], encode, trigger_images: torch.Tensor,
                 *, seeds: list[int], group_seed: int, input_range: tuple[float, float], batch_size: int = 64,
                 trigger_repeat: int = 4, noise_copies: int = 0, noise_std: float = 0.0, prune_copies: int = 0,
                 prune_max: float = 0.9, channel_order: torch.Tensor | None = None, teacher: torch.Tensor | None = None,
                 copies: dict[int, list[torch.Tensor]] | None = None) -> None:
        super().__init__()
        if len(seeds) != len(ratios):
            raise ValueError(f"{len(ratios)} ratios and {len(seeds)} seeds")
        if prune_copies and channel_order is None:
            raise ValueError("prune_copies needs the trunk's channel order")
        self.ratios, self.clean, self.encode, self.trigger_images = ratios, clean, encode, trigger_images
        self.seeds, self.group_seed, self.input_range = seeds, group_seed, input_range
        self.batch_size, self.trigger_repeat = batch_size, trigger_repeat
        self.noise_copies, self.noise_std = noise_copies, noise_std
        self.prune_copies, self.prune_max, self.channel_order = prune_copies, prune_max, channel_order
        self.teacher = teacher  # the host's logits for the clean rows (distillation), or None
        self.copies = copies

    def _shared(self, epoch: int) -> list[torch.Tensor]:
        """The trigger copies every user trains on this epoch (trunk outputs), in trigger order per copy."""
        if self.copies is not None and epoch in self.copies:
            return self.copies[epoch]
        g = torch.Generator().manual_seed(self.group_seed * 100_003 + epoch)
        parts = []
        if self.noise_copies and self.noise_std > 0:
            x = self.trigger_images.repeat(self.noise_copies, *[1] * (self.trigger_images.dim() - 1))
            std = torch.rand(len(x), generator=g).mul(self.noise_std).view(-1, *[1] * (x.dim() - 1))
            parts.append(self.encode((x + std * torch.randn(x.shape, generator=g)).clamp(*self.input_range)))
        if self.prune_copies:
            from fingermarks.embedding.head import pruned_copies

            parts.append(pruned_copies(self.ratios[0].triggers, self.channel_order, self.prune_copies, self.prune_max, g))
        if self.copies is not None:
            self.copies[epoch] = parts
        return parts

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        shared = self._shared(epoch)
        copies = (self.noise_copies if self.noise_copies and self.noise_std > 0 else 0, self.prune_copies)
        # the users still training: a done user's weights are final, its rows would cost a forward and a backward
        done = self.trainer.lightning_module.done if self.trainer is not None else torch.zeros(len(self.ratios), dtype=torch.bool)
        users = (~done).nonzero().flatten()
        # the epoch's pool of rows: the clean rows, the shared copies, then each user's trigger batch; a user's epoch is
        # its clean rows, its trigger batch `trigger_repeat` times and the shared copies, shuffled (indices into the pool)
        clean_x, clean_y = self.clean
        parts = [clean_x, *shared]
        shared_index = torch.arange(len(clean_x), sum(len(p) for p in parts))
        index, targets = [], []
        for ratio, seed in ((self.ratios[u], self.seeds[u]) for u in users.tolist()):
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            chosen = torch.randperm(len(clean_x), generator=g)[: int(round(ratio.p * len(clean_x)))]
            x, y = ratio.trigger_batch()
            start = sum(len(p) for p in parts)
            parts.append(x)
            rows = torch.cat([chosen, torch.arange(start, start + len(x)).repeat(self.trigger_repeat), shared_index])
            order = torch.randperm(len(rows), generator=g)
            index.append(rows[order])
            targets.append(torch.cat([clean_y[chosen], y.repeat(self.trigger_repeat),
                                      *[ratio.targets.repeat(c) for c in copies if c]])[order])
        pool = torch.cat(parts)
        teacher_pool = None if self.teacher is None else torch.cat(
            [self.teacher, self.teacher.new_full((len(pool) - len(clean_x), self.teacher.shape[1]), float("nan"))])
        steps = max(1, max(math.ceil(len(t) / self.batch_size) for t in targets))
        return DataLoader(_Steps(pool, index, targets, steps, users, teacher_pool), batch_size=None, shuffle=False)


class StackedDynamicRatio(L.Callback):
    """Every user's `DynamicRatio`, read on its stacked head: the triggers' target probabilities of all users in one
    forward, the DeepFool neighbours of all users' active triggers in one search. A user that is done is frozen in the
    module, and the fit stops when all are."""

    def __init__(self, ratios: list[DynamicRatio]) -> None:
        super().__init__()
        self.ratios = ratios
        self.epochs = [0] * len(ratios)  # epochs each user trained

    @torch.no_grad()
    def _probs(self, module: StackedHeads) -> torch.Tensor:
        triggers = self.ratios[0].triggers.to(module.device)  # every user's triggers are the key's
        return module(triggers.expand(module.users, *triggers.shape)).softmax(-1).cpu()

    def _read(self, trainer: L.Trainer, module: StackedHeads, users: list[int]) -> torch.Tensor:
        broadcast = trainer.strategy.broadcast
        was_training = module.training
        module.eval()
        probs, done = self._probs(module), torch.zeros(len(self.ratios), dtype=torch.bool)
        for u in users:
            ratio = self.ratios[u]
            stats = ratio.judge(probs[u].argmax(1) == ratio.targets, probs[u].gather(1, ratio.targets.view(-1, 1)).squeeze(1), broadcast)
            if trainer.current_epoch == 0 and not ratio.set_up:
                ratio.start(stats)
            else:
                ratio.advance(trainer.current_epoch + 1, stats)
                self.epochs[u] = trainer.current_epoch + 1
            done[u] = bool(stats["done"])
        searched = [u for u in users if self.ratios[u].wants_neighbours()]
        for u in users:
            self.ratios[u].set_neighbours(None)
        if searched:
            first = self.ratios[searched[0]]
            counts = [int(self.ratios[u].active.sum()) for u in searched]
            x = torch.cat([self.ratios[u].triggers[self.ratios[u].active] for u in searched])
            owner = torch.repeat_interleave(torch.tensor(searched), torch.tensor(counts))
            found = deepfool(module, x.to(module.device), candidates=first.candidates, max_iter=first.max_iter,
                             overshoot=first.overshoot, input_range=first.input_range,
                             rows_forward=_rows_forward(module, owner.to(module.device)))
            found = broadcast(found.cpu(), src=0)
            for u, part in zip(searched, found.split(counts)):
                self.ratios[u].set_neighbours(part)
        module.train(was_training)
        return done

    def on_fit_start(self, trainer: L.Trainer, pl_module: StackedHeads) -> None:
        done = self._read(trainer, pl_module, list(range(len(self.ratios))))
        pl_module.freeze(done)
        trainer.should_stop = bool(pl_module.done.all())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: StackedHeads) -> None:
        live = [u for u in range(len(self.ratios)) if not bool(pl_module.done[u])]
        done = self._read(trainer, pl_module, live)
        if bool(done.any()):
            pl_module.freeze(done)
        pl_module.log_dict({"embed/done": float(pl_module.done.sum()), "embed/epochs": float(trainer.current_epoch + 1)})
        if bool(pl_module.done.all()):
            trainer.should_stop = True
