"""Piracy copies of a victim model: extracted students and modified copies.

The positive counterpart of the owner's null pool (evidence.pool): models *derived* from the victim.
The owner makes such copies himself to train a piracy detector (UAP fingerprinting's encoder, from
his own data), and evaluations make them from the thief's data to measure one. A copy is one spec:

- ``{kind: distill, student: <model config>, budget: 1000, labels: hard|soft}``: model extraction.
  The victim answers ``budget`` queries (images of the given pool); the student, a fresh model of
  another (or the same) architecture, is trained on its top-1 labels (``hard``, cross-entropy) or
  on its probabilities (``soft``, KL divergence) for a fixed number of optimiser steps (Adam, cosine
  decay). A budget above the pool's size is filled with randomly shifted copies of pool images
  (each shifted copy is one more query), as an attacker with few images would do.
- ``{kind: finetune, epochs: 2, lr: 1e-3, reinit_last: false}``: fine-tuning of all layers on
  labelled images (FTAL; ``reinit_last``: RTAL), Adam.
- ``{kind: prune, rate: 0.5}``: global L1 magnitude pruning of conv/linear weights.

Every copy is seeded (``seed``) and cached under ``<cache>/piracy/`` by victim, spec, data and
seed. The thief's data (``attacker_pool``) is disjoint from the owner's (``owner_pool``): the
datamodule's attacker split where it has one, else a fixed, seeded third of its training pool.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fingermarks.cache import cache_path
from fingermarks.data.base import stratified_split
from fingermarks.metrics import accuracy, predict_probabilities

log = logging.getLogger(__name__)

#: seed of the fixed attacker third carved out of `train_eval_set` when the datamodule has no attacker split
ATTACKER_SPLIT_SEED = 7


def _own_attacker_indices(datamodule) -> torch.Tensor | None:
    """Indices into `train_eval_set` of the thief's third, when the datamodule has no attacker split."""
    if len(getattr(datamodule, "attacker_set", ()) or ()) > 0:
        return None
    labels = datamodule.train_eval_set.labels
    _, held = stratified_split(labels, round(len(labels) / 3), ATTACKER_SPLIT_SEED)
    return torch.as_tensor(held, dtype=torch.long)


def owner_pool(datamodule) -> torch.Tensor:
    """Indices into `train_eval_set` the owner may use (points, his own students): never the thief's."""
    n = len(datamodule.train_eval_set)
    banned = _own_attacker_indices(datamodule)
    keep = torch.ones(n, dtype=torch.bool)
    if banned is not None:
        keep[banned] = False
    return keep.nonzero().flatten()


def attacker_pool(datamodule) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The thief's labelled images (x, y) and where they come from (a dict for reports)."""
    datamodule.setup("fit")
    if len(getattr(datamodule, "attacker_set", ()) or ()) > 0:
        x, y = datamodule.attacker_set.tensors()
        return x, y, {"source": "datamodule.attacker_set", "size": len(x)}
    idx = _own_attacker_indices(datamodule)
    x, y = datamodule.train_eval_set.tensors(idx)
    digest = hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16]
    return x, y, {"source": f"train_eval_set, stratified third (seed {ATTACKER_SPLIT_SEED})", "size": len(x),
                  "indices_sha256": digest}


def shifted(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Each image translated by a random integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    shifts = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def query_images(pool: torch.Tensor, budget: int, generator: torch.Generator) -> torch.Tensor:
    """`budget` query images from `pool`: a random subset, or all of it plus shifted copies."""
    return labelled_queries(pool, None, budget, generator)[0]


def labelled_queries(pool: torch.Tensor, labels: torch.Tensor | None, budget: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`query_images` with the pool's own labels of the images drawn (None without labels): the same
    generator draws the same images, so a control student sees exactly what the thief's student saw."""
    order = torch.randperm(len(pool), generator=generator)
    if budget <= len(pool):
        return pool[order[:budget]], None if labels is None else labels[order[:budget]]
    extra = budget - len(pool)
    picks = torch.randint(0, len(pool), (extra,), generator=generator)
    x = torch.cat([pool[order], shifted(pool[picks], generator)])
    return x, None if labels is None else torch.cat([labels[order], labels[picks]])


def build(model_cfg, datamodule) -> nn.Module:
    from fingermarks.training.fit import build_classifier

    cfg = OmegaConf.create(model_cfg) if isinstance(model_cfg, dict) else model_cfg
    return build_classifier(cfg, datamodule)


def _train(model: nn.Module, x: torch.Tensor, target: torch.Tensor, soft: bool, steps: int, lr: float,
           batch_size: int, generator: torch.Generator) -> nn.Module:
    """Adam with cosine decay for `steps` steps on (x, target): CE on labels or KL on probabilities."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    n, done = len(x), 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            logits = model(x[idx])
            if soft:
                loss = F.kl_div(F.log_softmax(logits, 1), target[idx], reduction="batchmean")
            else:
                loss = F.cross_entropy(logits, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done >= steps:
                break
    return model.eval()


def distill(victim: nn.Module, student_cfg, datamodule, pool: torch.Tensor, budget: int, labels: str = "hard",
            steps: int = 800, lr: float = 2e-3, batch_size: int = 64, seed: int = 0,
            pool_labels: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """A student of `student_cfg` (a model config, or a freshly initialised nn.Module) extracted from
    `victim` with `budget` queries of `pool` images: trained on the victim's top-1 labels (`hard`) or
    probabilities (`soft`). `truth` is the control that never queries the victim: the same images, the
    same initialisation and batches (same seed), trained on `pool_labels`, the thief's own labels."""
    if labels not in ("hard", "soft", "truth"):
        raise ValueError(f"distill: labels must be hard, soft or truth, got {labels!r}")
    if int(budget) < 1:
        raise ValueError(f"distill: the query budget must be >= 1, got {budget}")
    if labels == "truth" and pool_labels is None:
        raise ValueError("distill: labels=truth needs the pool's own labels (pool_labels)")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, truth = labelled_queries(pool, pool_labels if labels == "truth" else None, int(budget), g)
    if labels == "truth":
        target = truth
    else:
        probs = predict_probabilities(victim, x)
        target = probs if labels == "soft" else probs.argmax(1)
    fresh = student_cfg if isinstance(student_cfg, nn.Module) else build(student_cfg, datamodule)
    student = _train(fresh, x, target, labels == "soft", steps, lr, batch_size, g)
    return student, {"queries": len(x), "steps": steps}


def finetune(victim: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 2, lr: float = 1e-3,
             reinit_last: bool = False, batch_size: int = 64, seed: int = 0) -> tuple[nn.Module, dict]:
    """FTAL (all layers, Adam) on the labelled (x, y); RTAL re-initialises the last layer first."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(victim)
    for p in model.parameters():
        p.requires_grad_(True)
    if reinit_last:
        model.classifier.reset_parameters()
    steps = int(epochs) * math.ceil(len(x) / batch_size)
    return _train(model, x, y, False, steps, lr, batch_size, g), {"steps": steps}


def prune(victim: nn.Module, rate: float) -> tuple[nn.Module, dict]:
    """Global L1 unstructured pruning of every conv/linear weight at `rate`, made permanent."""
    from torch.nn.utils import prune as tprune

    model = copy.deepcopy(victim)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=float(rate))
    for m, name in params:
        tprune.remove(m, name)
    return model.eval(), {}


def spec_name(spec: dict) -> str:
    """A short readable name: distill:ResNet18:1000:soft, finetune:2:0.001, prune:0.5."""
    kind = spec["kind"]
    if kind == "distill":
        arch = str(spec["student"]["_target_"]).rsplit(".", 1)[-1]
        return f"distill:{arch}:{spec['budget']}:{spec.get('labels', 'hard')}"
    if kind == "finetune":
        return f"{'rtal' if spec.get('reinit_last') else 'ftal'}:{spec.get('epochs', 2)}:{spec.get('lr', 1e-3):g}"
    if kind == "prune":
        return f"prune:{spec['rate']:g}"
    raise ValueError(f"unknown piracy kind {kind!r}; choose distill, finetune or prune")


def expand(spec: Any) -> list[dict]:
    """A list of copy specs from a config: a list of specs, or {students: {archs, budgets, labels},
    copies: [...]} (every architecture x budget x label kind, then the listed copies)."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) or OmegaConf.is_config(spec) else spec
    if isinstance(spec, dict):
        out = []
        grid = spec.get("students") or {}
        for arch in grid.get("archs", []):
            for budget in grid.get("budgets", []):
                for labels in grid.get("labels", ["hard"]):
                    out.append({"kind": "distill", "student": arch, "budget": int(budget), "labels": labels,
                                **{k: grid[k] for k in ("steps", "lr") if k in grid}})
        return out + [dict(c) for c in spec.get("copies", [])]
    return [dict(s) for s in (spec or [])]


def make_copy(victim: nn.Module, spec: dict, datamodule, pool: torch.Tensor, labelled: tuple[torch.Tensor, torch.Tensor],
              seed: int) -> tuple[nn.Module, dict]:
    kind = spec["kind"]
    start = time.perf_counter()
    if kind == "distill":
        model, info = distill(victim, spec["student"], datamodule, pool, int(spec["budget"]), spec.get("labels", "hard"),
                              steps=int(spec.get("steps", 800)), lr=float(spec.get("lr", 2e-3)), seed=seed,
                              pool_labels=labelled[1])
    elif kind == "finetune":
        model, info = finetune(victim, *labelled, epochs=int(spec.get("epochs", 2)), lr=float(spec.get("lr", 1e-3)),
                               reinit_last=bool(spec.get("reinit_last", False)), seed=seed)
    elif kind == "prune":
        model, info = prune(victim, float(spec["rate"]))
    else:
        raise ValueError(f"unknown piracy kind {kind!r}; choose distill, finetune or prune")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), dict(info, seconds=time.perf_counter() - start)


def piracy_population(victim: nn.Module, spec: Any, datamodule, x: torch.Tensor, y: torch.Tensor, seed_base: int,
                      seed: int, cache_dir=None, role: str = "piracy") -> list[tuple[nn.Module, dict]]:
    """Every copy of `spec` made from `victim` with the images x (labels y for fine-tuning); copy r
    gets seed seed_base + 100*seed + r, or the spec's own `seed` (a control paired with a copy takes the
    copy's seed). Cached by victim, spec, data and seed when `cache_dir`."""
    from fingermarks.key import host_fingerprint
    from fingermarks.model_io import load_model, read_model_file, save_model

    victim = victim.eval()
    victim_id = host_fingerprint(victim)
    data_id = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
    out = []
    for r, s in enumerate(expand(spec)):
        s_seed = int(s.pop("seed")) if "seed" in s else seed_base + 100 * seed + r
        path = cache_path(cache_dir, "piracy", {"victim": victim_id, "spec": s, "data": data_id, "seed": s_seed})
        if path is not None and path.is_file():
            model, info = load_model(path), dict(read_model_file(path)["meta"], cached=True)
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
        else:
            model, info = make_copy(victim, s, datamodule, x, (x, y), s_seed)
            info = dict(info, name=spec_name(s), seed=s_seed, clean_acc=accuracy(model, datamodule.test_set),
                        role=f"{role}{r}", cached=False)
            if path is not None:
                save_model(model, path, info)
        log.info("%s%d %s: acc %.4f", role, r, info["name"], info["clean_acc"])
        out.append((model, info))
    return out
