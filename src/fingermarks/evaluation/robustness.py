"""Robustness curves: verify the owner's key on the attacked model at every point of an attack's axis.

Every point carries the attacked deployment's clean accuracy next to the verdict, so an attack
that destroys the model to destroy the watermark is visible as such. One tidy row per point.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

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
              user: str | None, data_name: str) -> dict[str, Any]:
    """One tidy row: the point on the axis, the attacked model's accuracy and the verdict's evidence."""
    bit_errors = report.distances.get(user) if user is not None else None
    erasures = key.n - report.valid_bits if report.valid_bits is not None else None
    min_margin = int(key.decision.get("min_margin", 1))
    return {
        "data": data_name, "method": key.method, "user": user,
        "attack": attack.name, "axis": attack.axis, "strength": strength, "default": strength == attack.default,
        "clean_acc": clean_acc, "base_clean_acc": base_clean_acc, "acc_drop": 100 * (base_clean_acc - clean_acc),
        "match_rate": report.match_rate, "threshold": report.threshold, "owned": report.owned, "p_value": report.p_value,
        "bit_acc": report.bit_acc, "traced_user": report.traced_user,
        # a fingerprint has no user: then "traced correctly" means "not pinned on anyone"
        "traced_correctly": report.traced_user == user,
        "hamming": report.hamming, "margin": report.margin,
        "bit_errors": bit_errors, "erasures": erasures, "n_triggers": key.n,
        "min_distance": key.min_distance, "min_margin": min_margin,
        "decodable": decodable(bit_errors, erasures, key.min_distance, min_margin),
    }


def robustness_curve(attack: Attack, model, key: Key, user: str | None, ctx: RunContext, data: AttackerData) -> list[dict[str, Any]]:
    """Attack `model` (user `user`'s distributed copy) along the axis and verify it at every point."""
    base = deployed_accuracy(ModuleSuspect(model), data.test)
    rows = []
    for strength, suspect in attack.run(model, data, ctx):
        report = verify_suspect(key, suspect, expected_user=user)
        row = curve_row(attack, strength, report, deployed_accuracy(suspect, data.test), base, key, user, ctx.datamodule.name)
        log.info("%s %s=%s: clean_acc %.4f (drop %.1f pts), match %.3f, bit_acc %s, owned %s, traced %s",
                 attack.name, attack.axis, strength, row["clean_acc"], row["acc_drop"], row["match_rate"],
                 "-" if row["bit_acc"] is None else f"{row['bit_acc']:.3f}", row["owned"], row["traced_user"])
        rows.append(row)
    return rows


def write_rows_csv(rows: Sequence[dict[str, Any]], path) -> None:
    """Write tidy rows atomically, columns in `COLUMNS` order (then any extra ones)."""
    write_csv(list(rows), path, list(COLUMNS) + [k for k in (rows[0] if rows else {}) if k not in COLUMNS])


def log_curves_wandb(rows: Sequence[dict[str, Any]], logger) -> bool:
    """Log each attack's curve as a wandb line plot (bit_acc, match_rate, clean_acc vs strength) and a
    wandb.Table of its rows. Works offline; returns False (and does nothing) for any other logger."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or not rows:
        return False
    import wandb

    run = logger.experiment
    for attack in dict.fromkeys(r["attack"] for r in rows):
        group = [r for r in rows if r["attack"] == attack]
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
