"""Uniqueness (the paper's Table 2): do independently trained models pass for ours?"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from fingermarks.context import RunContext
from fingermarks.key import Key
from fingermarks.suspects import ModuleSuspect
from fingermarks.verification import verify_suspect

# Far from the host seed and from the owner's reference (10_000+) and null (20_000+) models.
INDEPENDENT_SEED = 30_000


def independent_models(ctx: RunContext, same_arch: int, other_archs: list, seed: int, base_seed: int = INDEPENDENT_SEED):
    """Yield (name, arch, seed, model, info): `same_arch` models of the host's architecture, one per other architecture.

    Model r gets seed `base_seed + 100 * seed + r`; another `base_seed` gives a fresh population
    (a held-out check for settings that were tuned against the default one).
    """
    specs = [(ctx.model_cfg, r) for r in range(same_arch)]
    specs += [(OmegaConf.create(a) if isinstance(a, dict) else a, same_arch + r) for r, a in enumerate(other_archs)]
    for arch_cfg, r in specs:
        model_seed = base_seed + 100 * seed + r
        model, info = ctx.train_classifier(arch_cfg, model_seed, f"independent{r}")
        yield f"independent{r}", model.arch_name, model_seed, model, info


def uniqueness(key: Key, ctx: RunContext, cfg: DictConfig, seed: int) -> dict[str, Any]:
    """Verify every independent model against `key`; rows plus mean/max match rate and how many were owned."""
    rows = []
    for name, arch, model_seed, model, info in independent_models(ctx, int(cfg.same_arch), list(cfg.other_archs), seed, int(cfg.seed_base)):
        rep = verify_suspect(key, ModuleSuspect(model, name))
        rows.append({"model": name, "arch": arch, "seed": model_seed, "clean_acc": info["clean_acc"],
                     "match_rate": rep.match_rate, "p_value": rep.p_value, "owned": rep.owned,
                     "traced_user": rep.traced_user})
    rates = [r["match_rate"] for r in rows]
    return {
        "rows": rows,
        "mean_match_rate": sum(rates) / len(rates) if rates else None,
        "max_match_rate": max(rates) if rates else None,
        "owned": sum(r["owned"] for r in rows),
        "threshold": key.decision["threshold_count"] / key.n,
    }
