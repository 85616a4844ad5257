"""The ownership decision of a key: which rule counts a match, and the threshold under a null model.

Shared by every method so their verdicts are set the same way and compared fairly. The owner's
held-out independent models (seeds far from every other model's) estimate how often an unrelated
model matches by chance.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from fingermarks.context import RunContext
from fingermarks.metrics import predict_labels
from fingermarks.stats import binom_sf, match_threshold, null_rate

# Seeds of the owner's held-out null models: far from the host's and from evaluation models'.
NULL_SEED = 20_000


def null_models(ctx: RunContext, spec: int | Sequence, seed: int) -> list[nn.Module]:
    """The owner's held-out models: `spec` is a count (of the host's architecture) or a list of
    architecture configs. Cached by recipe and seed, so every method shares them."""
    from omegaconf import OmegaConf

    from fingermarks.methods.base import frozen

    archs = [ctx.model_cfg] * spec if isinstance(spec, int) else [OmegaConf.create(a) if isinstance(a, dict) else a for a in spec]
    return [frozen(ctx.train_classifier(a, NULL_SEED + 100 * seed + r, f"null{r}")[0]) for r, a in enumerate(archs)]


def calibrate_match_rule(triggers: torch.Tensor, pairs: torch.Tensor, models: list[nn.Module], rule: str,
                         alpha: float, num_classes: int) -> dict[str, Any]:
    """Step-1 decision of a key: Binomial(n, q) null, q from held-out independent models.

    `rule` "pair": a trigger matches when the label is either of its pair (floor 2/m);
    "label": when it equals the recorded `pairs[:, 1]` (floor 1/m). The threshold is the
    smallest count whose chance under the null is at most `alpha`; n + 1 when none is.
    """
    if rule not in ("pair", "label"):
        raise ValueError(f"unknown match rule '{rule}'; choose pair or label")
    n = len(triggers)
    matches = 0
    for model in models:
        pred = predict_labels(model, triggers)
        hit = (pred == pairs[:, 1]) | (pred == pairs[:, 0]) if rule == "pair" else pred == pairs[:, 1]
        matches += int(hit.sum())
    per_hit = 2 if rule == "pair" else 1
    floor = per_hit / num_classes
    q = null_rate(matches, n * len(models), floor)
    k = match_threshold(n, q, alpha)
    how = (f"Binomial(n={n}, q={q:.3f}) null; q from {len(models)} held-out independent models "
           f"({matches}/{n * len(models)} '{rule}' matches, Laplace-smoothed, floor {per_hit}/m={floor:.2f}); "
           f"threshold = smallest count with P[X>=count] <= alpha={alpha:g}")
    if k > n:
        how += f"; none of 0..{n} reaches it (unrelated models match as often as ours), so nothing is called owned"
    return {"match": rule, "null_rate": q, "alpha": alpha, "threshold_count": k, "how": how,
            "null_matches": matches, "null_models": len(models)}



def calibrate_id_rule(n: int, users: int, alpha: float) -> dict[str, Any]:
    """Step 1 by the user code itself (MBW's own test): a trigger matches when it gives the nearest
    registered ID's label; null: random bits, union over the `users` candidate IDs."""
    k = next((c for c in range(n + 1) if users * binom_sf(c, n, 0.5) <= alpha), n + 1)
    how = (f"agreement with the nearest of {users} registered IDs; null: random bits, "
           f"{users} x P[Binomial({n}, 0.5) >= count] <= alpha={alpha:g}")
    return {"match": "id", "null_rate": 0.5, "candidates": users, "alpha": alpha, "threshold_count": k, "how": how}
