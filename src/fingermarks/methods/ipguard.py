"""IPGuard (Cao, Jia, Gong, AsiaCCS 2021, seeds/ipguard.txt): fingerprint the host's classification boundary.

The host is left unchanged. Fingerprints are data points x minimising
`relu(z_i - z_j + k) + relu(max_{t != i,j} z_t - z_i)` (DESIGN.md): label j wins by margin k over
i, which is the runner-up; a suspect is the host (or derived from it) when it gives the recorded
label on most of them. k trades robustness (large k: deep inside j) against uniqueness (small k:
close to the host's own boundary, where unrelated models disagree).

Chosen here (the seed text is the abstract only):
- starting points are owner training images the host classifies correctly (`init: data`), i = their
  label and j a seeded random other label; `init: noise` starts from uniform noise instead, i = the
  host's label on it. All fingerprints are optimised in one batch; `oversample` candidates per kept
  fingerprint so that n reach the goal; the first n that do are kept, without further selection.
- the recorded label (`pairs[:, 1]`) is the host's label on the fingerprint (j for every reached one),
  `pairs[:, 0]` the source label i; the decision is the "label" rule with a Binomial null whose
  per-fingerprint chance is measured on held-out independent models (floor 1/m).
- no users: `embed` returns an unchanged copy of the host.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from fingermarks.context import RunContext
from fingermarks.evidence.rules import RULES
from fingermarks.fingerprint import ipguard_loss, optimise_inputs
from fingermarks.key import Key, check_host
from fingermarks.secret import KeySecret
from fingermarks.methods.base import WatermarkMethod, frozen, sample_sources
from fingermarks.metrics import accuracy


def random_other(i: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn label different from i, per row."""
    return (i + torch.randint(1, num_classes, (len(i),), generator=generator)) % num_classes


class IPGuard(WatermarkMethod):
    """Keygen: n boundary fingerprints (label j by margin k over runner-up i). No embedding, no users."""

    name = "ipguard"
    embeds = False

    def __init__(self, n_triggers: int, generation: DictConfig, decision: DictConfig) -> None:
        self.n = n_triggers
        self.gen, self.decision = generation, decision

    def generate(self, host: nn.Module, ctx: RunContext, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The n fingerprints and their (source i, recorded label) pairs, with a generation report."""
        g = self.gen
        dm = ctx.datamodule
        count = self.n * g.oversample
        if g.init == "data":
            x0, i, source = sample_sources(host, dm, count, generator, return_indices=True)
        elif g.init == "noise":
            lo, hi = dm.input_range
            x0 = lo + (hi - lo) * torch.rand(count, *dm.input_shape, generator=generator)
            with torch.no_grad():
                i = host(x0).argmax(1)
            source = torch.empty(0, dtype=torch.long)
        else:
            raise ValueError(f"unknown IPGuard init '{g.init}'; choose data or noise")
        j = random_other(i, dm.num_classes, generator)

        def objective(x: torch.Tensor, rows: torch.Tensor):
            loss = ipguard_loss(host(x), i[rows], j[rows], g.k)
            return loss, loss <= 0

        result = optimise_inputs(x0, objective, steps=g.steps, lr=g.lr, input_range=tuple(dm.input_range), eps=g.eps, norm=g.norm)
        x = result.images
        with torch.no_grad():
            label = host(x).argmax(1)
        dist = (x - x0).flatten(1).abs().amax(1)
        # the first n that reached the goal, in the seeded order: no selection (ranking by perturbation
        # size would favour the natural confusions, e.g. 4 -> 9, which unrelated models share)
        keep = torch.argsort((~result.reached).long(), stable=True)[: self.n]
        report = {
            "init": g.init, "k": float(g.k), "candidates": count, "reached": int(result.reached.sum()),
            "selected_reached": int(result.reached[keep].sum()), "selected_host_gives_j": int((label == j)[keep].sum()),
            "linf_mean": float(dist[keep].mean()), "linf_max": float(dist[keep].max()),
            "steps": result.steps, "seconds": result.seconds,
            "source_indices": source[keep].tolist() if len(source) else [],
        }
        return x[keep], torch.stack([i[keep], label[keep]], 1), report

    def keygen(self, host: nn.Module, ctx: RunContext, users: list[str], seed: int, secret: KeySecret | None = None) -> Key:
        """Fingerprints from `secret`'s random choices (fresh when None); the recorded-label rule is
        calibrated on the owner's null pool (`seed` picks those models)."""
        if users:
            raise ValueError("IPGuard is a fingerprint: it registers no users (run it with users=0 or through the pipeline)")
        secret = secret or KeySecret.fresh()
        host = frozen(copy.deepcopy(host))
        triggers, pairs, report = self.generate(host, ctx, secret.generator("sources"))
        decision = RULES["label"].calibrate(self.decision, ctx, seed, triggers, pairs)
        return Key.for_host(self.name, host, ctx.datamodule, triggers, pairs, decision, seed,
                            {"generation": report, "source_indices": report.pop("source_indices")}, secret)

    def embed(self, host: nn.Module, key: Key, user: str, ctx: RunContext, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """A fingerprint changes nothing: the distributed model is the host itself."""
        check_host(key, host)
        model = copy.deepcopy(host).eval()
        return model, {"embed_seconds": 0.0, "embed_epochs": 0, "clean_acc": accuracy(model, ctx.datamodule.test_set),
                       "history": [], "all_matched": True}
