"""The dynamic-ratio callback of Algorithm 1: which triggers to train on, and how much clean data.

Lightning builds an epoch's dataloader before `on_train_epoch_start`, so the state for
epoch e+1 is decided in `on_train_epoch_end` of epoch e (and in `on_fit_start` for the
first), and the embedding data reads it when the dataloader is rebuilt
(`reload_dataloaders_every_n_epochs=1`).

Checkpoints hold only numbers (p, the active mask, the history): the DeepFool neighbours are
near-copies of the secret triggers, so a resumed fit recomputes them from the restored weights.
Under DDP every decision is rank 0's, broadcast: batch-norm statistics differ between ranks, and
a rank that stopped alone (or trained on a set of another size) would hang the others.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch

from fingermarks.embedding.deepfool import deepfool


def stop_reason(history: list[dict[str, Any]]) -> str | None:
    """Why an embedding ended, read from its history: "targets" (every trigger at `done_prob`), "plateau" (the
    plateau stop: the weakest target probability stopped rising short of it), "max_epochs" (neither: the epoch cap);
    None without a history (under ddp_spawn the callback's state stays in the workers)."""
    if not history:
        return None
    last = history[-1]
    if last.get("stalled"):
        return "plateau"
    return "targets" if last["done"] else "max_epochs"


def plateaued(weakest: list[float], all_matched: bool, plateau_epochs: int, plateau_prob: float,
              plateau_delta: float) -> bool:
    """The plateau stop's rule on a run's weakest target probabilities (`weakest`: the starting weights', then one per
    trained epoch, this epoch's last): every trigger matched now, the weakest at least `plateau_prob`, and less than
    `plateau_delta` above its value `plateau_epochs` trained epochs ago. `plateau_epochs` 0: never."""
    if not plateau_epochs or len(weakest) <= plateau_epochs + 1 or not all_matched:
        return False
    return weakest[-1] >= plateau_prob and weakest[-1] - weakest[-1 - plateau_epochs] < plateau_delta


def _trained(pl_module: L.LightningModule) -> torch.nn.Module:
    """What the triggers are fed to: the module's trained part (a head-only embedding's head, whose triggers are
    the trunk's outputs), or its whole model."""
    trained = getattr(pl_module, "trained", None)
    return trained() if callable(trained) else pl_module.model


class DynamicRatio(L.Callback):
    """Tracks which triggers already give their target and grows the clean-data fraction p.

    - matched triggers are left out (training on them only erodes their fingerprint
      nature) unless their target probability falls below `readmit_prob`;
    - unmatched ones are trained on, joined by DeepFool neighbours with the same target;
    - p starts at `p0` and grows by `dp` per epoch up to `p_max`;
    - training stops once every trigger is matched with probability >= `done_prob`;
    - with `plateau_epochs` > 0 it also stops once every trigger is matched, the weakest target probability is at
      least `plateau_prob` and it rose by less than `plateau_delta` over the last `plateau_epochs` epochs: with the
      learning rate decayed, a user short of `done_prob` by a trigger or two otherwise trains on, unchanged, to the
      epoch cap (and holds up the users embedded with it).
    """

    def __init__(
        self,
        triggers: torch.Tensor,
        targets: torch.Tensor,
        *,
        p0: float = 0.1,
        dp: float = 0.1,
        p_max: float = 0.5,
        readmit_prob: float = 0.5,
        done_prob: float = 0.5,
        adversarial: bool = True,
        deepfool_overshoot: float = 0.02,
        deepfool_candidates: int = 10,
        deepfool_max_iter: int = 50,
        input_range: tuple[float, float] = (0.0, 1.0),
        plateau_epochs: int = 0,
        plateau_prob: float = 0.7,
        plateau_delta: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0 <= p0 <= p_max <= 1:
            raise ValueError(f"need 0 <= p0 <= p_max <= 1, got p0={p0}, p_max={p_max}")
        if plateau_epochs < 0 or plateau_delta < 0:
            raise ValueError(f"need plateau_epochs >= 0 and plateau_delta >= 0, got {plateau_epochs}, {plateau_delta}")
        self.plateau_epochs, self.plateau_prob, self.plateau_delta = int(plateau_epochs), plateau_prob, plateau_delta
        self.triggers, self.targets = triggers, targets
        self.p0, self.dp, self.p_max = p0, dp, p_max
        self.readmit_prob, self.done_prob = readmit_prob, done_prob
        self.adversarial, self.overshoot, self.input_range = adversarial, deepfool_overshoot, input_range
        self.candidates, self.max_iter = deepfool_candidates, deepfool_max_iter
        self.p = p0
        self.active = torch.ones(len(triggers), dtype=torch.bool)
        self.neighbours = torch.empty(0, *triggers.shape[1:])
        self.neighbour_targets = torch.empty(0, dtype=torch.long)
        self.history: list[dict[str, float]] = []
        self.set_up = False  # the first run's set-up is done (restored from a checkpoint on resume)

    # -- what the next epoch trains on -------------------------------------------------
    def trigger_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Active triggers and their DeepFool neighbours, with target labels."""
        x = torch.cat([self.triggers[self.active], self.neighbours])
        y = torch.cat([self.targets[self.active], self.neighbour_targets])
        return x, y

    @torch.no_grad()
    def target_probs(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Per trigger: whether `model`'s top-1 is its target, and the target's probability (eval mode)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        probs = model(self.triggers.to(device)).softmax(1).cpu()
        model.train(was_training)
        matched = probs.argmax(1) == self.targets
        return matched, probs.gather(1, self.targets.view(-1, 1)).squeeze(1)

    def deepfool(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """DeepFool neighbours of `x` on `model` at this callback's settings, on the CPU."""
        return deepfool(model, x.to(next(model.parameters()).device), candidates=self.candidates, max_iter=self.max_iter,
                        overshoot=self.overshoot, input_range=self.input_range).cpu()

    def set_neighbours(self, found: torch.Tensor | None) -> None:
        """The active triggers' neighbours (`found`, one per active trigger), or none (None)."""
        if found is None:
            self.neighbours, self.neighbour_targets = self.neighbours[:0], self.neighbour_targets[:0]
        else:
            self.neighbours, self.neighbour_targets = found, self.targets[self.active].clone()

    def wants_neighbours(self) -> bool:
        return self.adversarial and bool(self.active.any())

    def _set_neighbours(self, model: torch.nn.Module, broadcast) -> None:
        """DeepFool neighbours of the active triggers on `model`'s current weights (rank 0's under DDP)."""
        found = self.deepfool(model, self.triggers[self.active]) if self.wants_neighbours() else None
        self.set_neighbours(None if found is None else broadcast(found, src=0))

    def stalled(self, matched: torch.Tensor, weakest: float) -> bool:
        """`plateaued` at this ratio's settings, with this epoch's match and weakest target probability after the
        history's."""
        return plateaued([row["min_target_prob"] for row in self.history] + [weakest], bool(matched.all()),
                         self.plateau_epochs, self.plateau_prob, self.plateau_delta)

    def judge(self, matched: torch.Tensor, prob: torch.Tensor, broadcast=lambda value, src=0: value) -> dict[str, float]:
        """From each trigger's match and target probability: which to train on next; the epoch's stats."""
        active = ~matched | (prob < self.readmit_prob)
        held, weakest = bool((matched & (prob >= self.done_prob)).all()), float(prob.min())
        stalled = not held and self.stalled(matched, weakest)
        stats = {"matched": int(matched.sum()), "active": int(active.sum()), "min_target_prob": weakest,
                 "done": held or stalled, "stalled": stalled}
        self.active, stats = broadcast((active, stats), src=0)
        return stats

    def refresh(self, model: torch.nn.Module, broadcast=lambda value, src=0: value) -> dict[str, float]:
        """Which triggers `model` matches, which to train on next, and their DeepFool neighbours; the epoch's stats.
        `broadcast` is the strategy's (rank 0 decides under DDP); a single process passes values through."""
        stats = self.judge(*self.target_probs(model), broadcast)
        self._set_neighbours(model, broadcast)
        return stats

    def start(self, stats: dict[str, float]) -> None:
        """The state before the first epoch, from `refresh`'s stats on the starting weights."""
        self.p = self.p0
        self.history = [{"epoch": 0, "p": 0.0, **stats}]
        self.set_up = True

    def advance(self, epoch: int, stats: dict[str, float], clean: float | None = None) -> dict[str, float]:
        """Record epoch `epoch` (1-based, trained at the current p) with `refresh`'s stats, and grow p; the row."""
        row = {"epoch": epoch, "p": self.p, **stats}
        if clean is not None:
            row["clean_acc"] = float(clean)
        self.p = min(self.p + self.dp, self.p_max)
        self.history.append(row)
        return row

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        return self.refresh(_trained(pl_module), trainer.strategy.broadcast)

    # -- Lightning hooks ----------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores callback state before this hook but the loop counters after it
        # (current_epoch is still 0 on a resumed fit): a resume is told by its checkpoint path.
        if trainer.ckpt_path is None or not self.set_up:
            stats = self._update(trainer, pl_module)
            self.start(stats)
            trainer.should_stop = stats["done"]
        else:
            # the first resumed epoch's dataloader is built before on_train_start: neighbours now
            self._set_neighbours(_trained(pl_module), trainer.strategy.broadcast)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        used_p = self.p
        stats = self._update(trainer, pl_module)
        self.advance(trainer.current_epoch + 1, stats, trainer.callback_metrics.get("val/acc"))
        # `embed/epochs` reaches the caller even where this callback's state does not (ddp_spawn);
        # the values agree on every rank, so syncing them only silences Lightning's DDP warning
        pl_module.log_dict({"embed/matched": float(stats["matched"]), "embed/p": used_p, "embed/active": float(stats["active"]),
                            "embed/epochs": float(trainer.current_epoch + 1)}, sync_dist=True)
        if stats["done"]:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """Numbers only: no trigger, neighbour or target goes into a checkpoint."""
        return {"p": self.p, "active": self.active.clone(), "history": copy.deepcopy(self.history), "set_up": self.set_up}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p, self.active = state["p"], state["active"].clone()
        self.history, self.set_up = copy.deepcopy(state["history"]), bool(state.get("set_up", True))
        self.neighbours, self.neighbour_targets = self.neighbours[:0], self.neighbour_targets[:0]  # recomputed at fit start
