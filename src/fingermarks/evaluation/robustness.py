"""Robustness curves: verify the owner's key on the attacked model at every point of an attack's axis.

Every point carries the attacked deployment's clean accuracy next to the verdict, so an attack
that destroys the model to destroy the watermark is visible as such. One tidy row per point.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from fingermarks.attacks.base import Attack, AttackerData
from fingermarks.context import RunContext
from fingermarks.files import write_csv
from fingermarks.key import Key
from fingermarks.suspects import ModuleSuspect, Suspect
from fingermarks.verification import verify_suspect

log = logging.getLogger(__name__)

COLUMNS = (
    "data", "method", "user", "attack", "axis", "strength", "default",
    "clean_acc", "base_clean_acc", "acc_drop",
    "match_rate", "threshold", "owned", "p_value",
    "bit_acc", "traced_user", "traced_correctly", "hamming", "margin",
    "bit_errors", "erasures", "n_triggers", "min_distance", "min_margin", "decodable",
    # the attacker and the colluders (a superset of the columns above, which keep their meaning; with
    # colluders, `user` is the first of them and `traced_correctly` means "a colluder named")
    "colluders", "innocent_accused", "attacker_images", "host_attacker_acc",
    # every user the verdict accuses (`;`-joined; the traced user and the rule's per-user accusations)
    "accused",
    # query evasion only: the share of the key's triggers and of the test images the detector flags
    "triggers_flagged", "clean_flagged",
)
#: the metrics drawn as curves (all in [0, 1])
CURVES = ("bit_acc", "match_rate", "clean_acc")


def deployed_accuracy(suspect: Suspect, dataset: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of what the suspect answers on labelled images (a noisy deployment answers with its noise)."""
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((suspect.labels(x) == y).sum())
        total += len(y)
    return correct / total


def decodable(bit_errors: int | None, erasures: int | None, min_distance: int, min_margin: int) -> bool | None:
    """Whether the codebook guarantees the right user still wins by `min_margin`: 2e + f <= d - m.

    With e wrong bits and f erased ones, the true ID is at distance e over the read bits and any
    other ID at least d - f - e, so the margin is at least d - f - 2e.
    """
    if bit_errors is None or erasures is None:
        return None
    return 2 * bit_errors + erasures <= min_distance - min_margin


def curve_row(attack: Attack, strength: float, report, clean_acc: float, base_clean_acc: float, key: Key,
              user: str | None, data_name: str, colluders: Sequence[str | None] | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One tidy row: the point on the axis, the attacked model's accuracy and the verdict's evidence.

    `colluders`: the users whose models the attacked suspect is made of (default: `user` alone).
    Tracing is right when it names one of them, as the traced user or among the accused ("a colluder
    named"; for a fingerprint, with no user: nobody named) and an innocent is accused when it names
    anyone else, in either place. `bit_errors` counts the read bits against the nearest colluder.
    """
    colluders = [user] if colluders is None else list(colluders)
    named = report.traced_user
    accused = list(dict.fromkeys(([named] if named is not None else []) + list(getattr(report, "accused", None) or [])))
    guilty = [c for c in colluders if c is not None]
    distances = [report.distances[c] for c in guilty if c in report.distances]
    bit_errors = min(distances) if distances else None
    erasures = key.n - report.valid_bits if report.valid_bits is not None else None
    min_margin = int(key.decision.get("min_margin", 1))
    return {
        "data": data_name, "method": key.method, "user": user,
        "attack": attack.name, "axis": attack.axis, "strength": strength, "default": strength == attack.default,
        "clean_acc": clean_acc, "base_clean_acc": base_clean_acc, "acc_drop": 100 * (base_clean_acc - clean_acc),
        "match_rate": report.match_rate, "threshold": report.threshold, "owned": report.owned, "p_value": report.p_value,
        "bit_acc": report.bit_acc, "traced_user": named,
        # a fingerprint has no user: then "traced correctly" means "not pinned on anyone"
        "traced_correctly": any(u in guilty for u in accused) if guilty else not accused,
        "hamming": report.hamming, "margin": report.margin,
        "bit_errors": bit_errors, "erasures": erasures, "n_triggers": key.n,
        "min_distance": key.min_distance, "min_margin": min_margin,
        "decodable": decodable(bit_errors, erasures, key.min_distance, min_margin),
        "colluders": ";".join(str(c) for c in guilty) or None,
        "innocent_accused": any(u not in guilty for u in accused), "attacker_images": None, "host_attacker_acc": None,
        "accused": ";".join(accused) or None, "triggers_flagged": None, "clean_flagged": None,
        **(extra or {}),
    }


def robustness_curve(attack: Attack, model, key: Key, user, ctx: RunContext, data: AttackerData,
                     host=None) -> list[dict[str, Any]]:
    """Attack the victim along the axis and verify it at every point.

    `model`/`user`: one user's distributed copy and its user (None for a fingerprint), or, for an
    attack on several users (`attack.victims` > 1), lists of their models and names, the colluders
    at a point being the first `attack.colluders(strength)` of them. `host` (optional): its accuracy
    on the attacker's images is reported (`host_attacker_acc`).
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    users = list(user) if isinstance(user, (list, tuple)) else [user] * len(models)
    if len(users) != len(models):
        raise ValueError(f"{len(models)} victim models for {len(users)} users")
    base = [deployed_accuracy(ModuleSuspect(m), data.test) for m in models]
    common = {"attacker_images": len(data.train),
              "host_attacker_acc": deployed_accuracy(ModuleSuspect(host), data.train) if host is not None else None}
    rows = []
    victims = models if attack.victims > 1 else models[0]
    for strength, suspect in attack.run(victims, data, ctx):
        k = attack.colluders(strength)
        report = verify_suspect(key, suspect, expected_user=users[0])
        extra = dict(common)
        if hasattr(suspect, "flagged"):  # an endpoint with an input detector: what does it catch?
            extra["triggers_flagged"] = float(suspect.flagged(key.triggers).float().mean())
            extra["clean_flagged"] = float(torch.cat([suspect.flagged(x) for x, _ in DataLoader(data.test, batch_size=512)])
                                           .float().mean())
        row = curve_row(attack, strength, report, deployed_accuracy(suspect, data.test), sum(base[:k]) / k, key,
                        users[0], ctx.datamodule.name, colluders=users[:k], extra=extra)
        log.info("%s %s=%s: clean_acc %.4f (drop %.1f pts), match %.3f, bit_acc %s, owned %s, traced %s, accused %s%s",
                 attack.name, attack.axis, strength, row["clean_acc"], row["acc_drop"], row["match_rate"],
                 "-" if row["bit_acc"] is None else f"{row['bit_acc']:.3f}", row["owned"], row["traced_user"],
                 row["accused"] or "nobody", " (INNOCENT)" if row["innocent_accused"] else "")
        rows.append(row)
    return rows


def write_rows_csv(rows: Sequence[dict[str, Any]], path) -> None:
    """Write tidy rows atomically, columns in `COLUMNS` order (then any extra ones)."""
    write_csv(list(rows), path, list(COLUMNS) + [k for k in (rows[0] if rows else {}) if k not in COLUMNS])


#: what each point logs to wandb, charted against the attack's strength (`robust/<measure>` vs `robust/strength`)
WANDB_MEASURES = CURVES + ("acc_drop", "owned", "traced_correctly", "p_value", "hamming", "margin", "innocent_accused")


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value == value:  # not NaN
        return float(value)
    return None


def log_curves_wandb(rows: Sequence[dict[str, Any]], logger) -> bool:
    """Log the robustness curves to wandb: every point as `robust/<measure>` (bit_acc, match_rate, clean_acc,
    acc_drop, owned, traced_correctly, p_value, ...) against `robust/strength` (`define_metric`), so each
    measure is a chart over the attack's axis and runs of a sweep overlay on one chart; the summary keeps
    the values at the attack's default strength (`robust/at_default/<measure>`). Rows of several attacks
    use `robust/<attack>/...`. Also, per attack, a line plot of the curves and a wandb.Table of the rows.
    Works offline; returns False (and does nothing) for any other logger."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or not rows:
        return False
    import wandb

    run = logger.experiment
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    for attack in attacks:
        group = [r for r in rows if r["attack"] == attack]
        prefix = "robust" if len(attacks) == 1 else f"robust/{attack}"
        step = f"{prefix}/strength"
        run.define_metric(step)
        for m in WANDB_MEASURES:
            run.define_metric(f"{prefix}/{m}", step_metric=step)
        for r in group:
            point = {f"{prefix}/{m}": v for m in WANDB_MEASURES if (v := _number(r.get(m))) is not None}
            run.log({step: float(r["strength"]), **point})
            if r.get("default"):
                run.summary.update({f"{prefix}/at_default/{k.rsplit('/', 1)[1]}": v for k, v in point.items()})
        curves = [m for m in CURVES if all(r[m] is not None for r in group)]
        first = group[0]
        title = f"{attack} vs {first['axis']} ({first['method']}, {first['user'] or 'no user'})"
        run.log({
            f"robustness/{attack}/curve": wandb.plot.line_series(
                xs=[float(r["strength"]) for r in group], ys=[[float(r[m]) for r in group] for m in curves],
                keys=curves, title=title, xname=first["axis"]),
            f"robustness/{attack}/table": wandb.Table(columns=list(first), data=[list(r.values()) for r in group]),
        })
    return True
