"""The one small interface every watermark or fingerprint scheme implements.

keygen: host -> secret key; embed: host + key + user -> distributed model (a
fingerprint returns the host untouched); verification needs only the key and the
suspect's top-1 labels on the triggers (`fingermarks.verification`), so experiments,
attacks and plots never depend on which scheme made the key.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from fingermarks.context import RunContext
from fingermarks.key import Key, check_host
from fingermarks.secret import KeySecret


class WatermarkMethod(ABC):
    name: ClassVar[str]
    #: False for fingerprints: the model is left unchanged and no user can be traced.
    embeds: ClassVar[bool] = True

    @abstractmethod
    def keygen(self, host: nn.Module, ctx: RunContext, users: list[str], seed: int, secret: KeySecret | None = None) -> Key:
        """Make the secret key from a trained host (the host is not modified).

        Every random choice of the key comes from `secret` (a fresh one from the OS when None);
        `seed` only selects the owner's own, non-secret models (references, null pool). The key
        names its decision rule (fingermarks.evidence.rules), which verification applies."""

    @abstractmethod
    def embed(self, host: nn.Module, key: Key, user: str, ctx: RunContext, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """Return user `user`'s distributed model and what it cost (`embed_seconds`, `embed_epochs`, ...)."""

    def group_size(self, host: nn.Module) -> int:
        """How many users one run embeds together on `host` (`embed_group`); 1: each user its own run."""
        return 1

    def embed_group(self, host: nn.Module, key: Key, users: list[str], ctx: RunContext,
                    seeds: list[int]) -> list[tuple[nn.Module, dict[str, Any]]]:
        """`users` embedded in one run (for a method whose `group_size` can exceed 1); by default each its own."""
        return [self.embed(host, key, user, ctx, seed) for user, seed in zip(users, seeds)]


def frozen(model: nn.Module) -> nn.Module:
    """Put a model in eval mode with no parameter gradients (inputs can still get gradients)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def start_user_model(key: Key, host: nn.Module, seed: int) -> nn.Module:
    """The start of a user's model: check the key was made for this host, seed everything, and
    return a copy of the host in train mode with every parameter trainable."""
    check_host(key, host)
    L.seed_everything(seed, workers=True)
    model = copy.deepcopy(host).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def sample_sources(host: nn.Module, datamodule, count: int, generator: torch.Generator, return_indices: bool = False):
    """`count` owner training images (no augmentation) the host classifies correctly, in a seeded order.

    Returns (x, y), or (x, y, indices into `train_eval_set`) with `return_indices`: the indices
    let attack experiments keep the attacker's data disjoint from the owner's trigger sources.
    """
    from fingermarks.metrics import predict_labels

    dataset = datamodule.train_eval_set
    order = torch.randperm(len(dataset), generator=generator)
    chunk = max(4 * count, 256)
    xs, ys, ids, have = [], [], [], 0
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        x, y = dataset.tensors(idx)
        ok = predict_labels(host, x) == y
        xs.append(x[ok]), ys.append(y[ok]), ids.append(idx[ok])
        have += int(ok.sum())
        if have >= count:
            break
    x, y, idx = torch.cat(xs)[:count], torch.cat(ys)[:count], torch.cat(ids)[:count]
    if len(x) < count:
        raise ValueError(f"only {len(x)} correctly classified training images for {count} requested sources")
    return (x, y, idx) if return_indices else (x, y)
