"""Batched multi-class DeepFool (Moosavi-Dezfooli et al. 2016)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    *,
    candidates: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
    input_range: tuple[float, float] = (0.0, 1.0),
    rows_forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Smallest (linearised) step that moves each image across its nearest decision boundary.

    Looks at the `candidates` most likely classes of every image; images are independent
    in eval mode, so one backward pass per class gives every image's gradient at once, and
    an image already across is left out of the later steps (its result is final).
    `rows_forward(points, rows)`, where given, gives the logits of the images `rows` (indices into `x`) at
    `points` (a model whose rows are not interchangeable, such as several users' stacked heads);
    `model` (put in eval mode for the search) is called otherwise.
    """
    forward = rows_forward or (lambda points, rows: model(points))
    was_training = model.training
    model.eval()
    lo, hi = input_range
    with torch.no_grad():
        logits = forward(x, torch.arange(len(x), device=x.device))
    k = min(candidates, logits.shape[1])
    classes = logits.topk(k, dim=1).indices  # column 0 is the current label
    orig = classes[:, 0]
    r_tot = torch.zeros_like(x)
    searching = torch.arange(len(x), device=x.device)  # rows not yet across: only they are evaluated again
    for _ in range(max_iter):
        xi = (x[searching] + (1 + overshoot) * r_tot[searching]).clamp(lo, hi).requires_grad_(True)
        out = forward(xi, searching)
        active = out.argmax(1) == orig[searching]
        if not bool(active.any()):
            break
        searching, out = searching[active], out[active]
        rows = classes[searching]
        f0 = out.gather(1, rows[:, :1]).squeeze(1)
        g0 = torch.autograd.grad(f0.sum(), xi, retain_graph=True)[0][active]
        best = torch.full((len(searching),), float("inf"), device=x.device)
        step = torch.zeros_like(g0)
        for c in range(1, k):
            fk = out.gather(1, rows[:, c : c + 1]).squeeze(1)
            gk = torch.autograd.grad(fk.sum(), xi, retain_graph=c < k - 1)[0][active]
            w = gk - g0
            w_norm = w.flatten(1).norm(dim=1) + 1e-8
            dist = (fk - f0).detach().abs() / w_norm
            closer = dist < best
            best = torch.where(closer, dist, best)
            r = ((dist + 1e-4) / w_norm).view(-1, *[1] * (x.dim() - 1)) * w
            step = torch.where(closer.view(-1, *[1] * (x.dim() - 1)), r, step)
        r_tot[searching] = r_tot[searching] + step
    model.train(was_training)
    return (x + (1 + overshoot) * r_tot).clamp(lo, hi).detach()
