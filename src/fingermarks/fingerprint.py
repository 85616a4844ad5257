"""Fingerprint generation: margin losses and one batched optimisation of input perturbations.

Pure functions over logits and images, so tests can call them without a Trainer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _gather(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, labels.view(-1, 1)).squeeze(1)


def max_excluding(logits: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
    """Per row, the largest logit over the classes not in `labels`."""
    masked = logits.clone()
    for lab in labels:
        masked.scatter_(1, lab.view(-1, 1), float("-inf"))
    return masked.max(1).values


def target_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_target minus the best other logit: > 0 iff `target` is top-1."""
    return _gather(logits, target) - max_excluding(logits, target)


def fingermarks_loss(logits: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float, lam: float) -> torch.Tensor:
    """Per-sample FingerMarks loss: relu(max_{t!=j} z_t - z_j + k) + lam * z_i.

    j becomes top-1 with margin k over the runner-up; the source label i is pushed down.
    """
    return F.relu(max_excluding(logits, j) - _gather(logits, j) + k) + lam * _gather(logits, i)


def ipguard_loss(logits: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float) -> torch.Tensor:
    """Per-sample IPGuard loss: relu(z_i - z_j + k) + relu(max_{t!=i,j} z_t - z_i) (j top-1, i runner-up)."""
    z_i, z_j = _gather(logits, i), _gather(logits, j)
    return F.relu(z_i - z_j + k) + F.relu(max_excluding(logits, i, j) - z_i)


def conferrable_penalty(references: Sequence[nn.Module], x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Mean probability that independently trained reference models give i or j.

    Pushing it down keeps only what is specific to the host (the idea of conferrable
    adversarial examples): an unrelated model should answer neither label of the pair.
    """
    if not references:
        return torch.zeros(len(x), device=x.device)
    total = 0.0
    for ref in references:
        p = ref(x).softmax(1)
        total = total + _gather(p, i) + _gather(p, j)
    return total / len(references)


def select_triggers(host_ok: torch.Tensor, reference_matches: torch.Tensor, tiebreak: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n most host-specific candidates, best first.

    Order: the host answers j, then fewest reference models matching (answering i or j),
    then the smallest `tiebreak` (the references' probability of i or j, or the perturbation size).
    """
    order = sorted(range(len(host_ok)), key=lambda c: (not bool(host_ok[c]), int(reference_matches[c]), float(tiebreak[c])))
    return torch.tensor(order[:n], dtype=torch.long)


@dataclass
class Optimised:
    """Result of `optimise_inputs`: the final images, which reached the goal, and the cost."""

    images: torch.Tensor
    reached: torch.Tensor
    steps: int
    seconds: float


def project(delta: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """Project a batch of perturbations onto the `norm` ball of radius `eps` (None: unbounded)."""
    if eps is None:
        return delta
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return delta * (eps / flat).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))
    raise ValueError(f"unknown norm '{norm}'; choose linf or l2")


def optimise_inputs(
    x0: torch.Tensor,
    objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    input_range: tuple[float, float] = (0.0, 1.0),
    eps: float | None = None,
    norm: str = "linf",
) -> Optimised:
    """Gradient descent on a perturbation of every image of the batch at once.

    `objective(x, rows)` returns (per-sample loss, per-sample done mask) for the images `x` of the
    batch rows `rows` (indices into x0: a per-sample objective picks its own targets with them). An
    image is frozen at the first step its goal holds, so it stays as close to its source as the goal
    allows; the others go on until `steps`. Only the images still searching are evaluated: most reach
    their goal within a few dozen steps, and the rest no longer pay for them. The images stay inside
    `input_range` and the eps-ball.
    """
    start = time.perf_counter()
    lo, hi = input_range
    delta = torch.zeros_like(x0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    final = x0.clone()
    reached = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    step = 0
    for step in range(1, steps + 1):
        rows = (~reached).nonzero().squeeze(1)
        x = (x0[rows] + delta[rows]).clamp(lo, hi)
        loss, done = objective(x, rows)
        done = done.detach()
        # every evaluated image keeps its latest checked state: the one `reached` speaks for
        final[rows] = x.detach()
        reached[rows] = done
        if bool(reached.all()):
            break
        opt.zero_grad(set_to_none=True)
        # only the images still searching contribute gradients (the frozen ones get zero)
        (loss * (~done).float()).sum().backward()
        opt.step()
        with torch.no_grad():
            delta.copy_(project(delta, eps, norm))
    return Optimised(final.detach(), reached.cpu(), step, time.perf_counter() - start)
