"""Adversarial perturbations of a batch, as pure functions: FGSM and PGD (L-inf), shared by the attacks
that train on them (`attacks.adv_train`, `attacks.adv_train_pgd`) and the optional adversarial
embedding (`embedding.module`, `robust_eps`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d x, in eval mode (crafting moves no BatchNorm statistics), parameters untouched."""
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    model.train(was_training)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, input_range: tuple[float, float]) -> torch.Tensor:
    """One signed-gradient step of size `eps` up the cross-entropy, kept in the input range."""
    if eps == 0:
        return x.detach().clone()
    return (x + eps * _input_gradient(model, x, y).sign()).clamp(*input_range).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
        input_range: tuple[float, float]) -> torch.Tensor:
    """L-inf projected gradient ascent on the cross-entropy (Madry et al.; no random start, as ART's
    default the WRT uses): `steps` signed steps of `step`, projected to the eps-ball and input range."""
    adv = x.detach().clone()
    if eps == 0:
        return adv
    for _ in range(int(steps)):
        adv = adv + step * _input_gradient(model, adv, y).sign()
        adv = torch.max(torch.min(adv, x + eps), x - eps).clamp(*input_range).detach()
    return adv
