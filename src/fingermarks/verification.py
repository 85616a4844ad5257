"""Two-step verification from top-1 labels: is the suspect ours (step 1), and which user leaked it (step 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fingermarks.codes import decode
from fingermarks.key import Key
from fingermarks.stats import binom_sf, tracing_p_value
from fingermarks.suspects import Suspect, check_compatible

HOST = "<host>"


@dataclass
class Report:
    """A verdict and the evidence behind it (the JSON report of verify.py)."""

    method: str
    owned: bool
    match_rate: float
    matches: int
    n_queries: int
    threshold: float
    threshold_how: str
    p_value: float
    null_rate: float
    alpha: float
    traced_user: str | None = None
    hamming: int | None = None
    margin: int | None = None
    runner_up: str | None = None
    trace_p_value: float | None = None
    bit_acc: float | None = None
    valid_bits: int | None = None
    distances: dict[str, int] = field(default_factory=dict)
    suspect: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "OWNED" if self.owned else "not owned"
        line = (
            f"{verdict}: match rate {self.match_rate:.3f} ({self.matches}/{self.n_queries}) vs threshold "
            f"{self.threshold:.3f}, p-value {self.p_value:.2e}"
        )
        if self.owned and self.traced_user is not None:
            line += f"; traced to '{self.traced_user}' (hamming {self.hamming}, margin {self.margin}, p {self.trace_p_value:.1e})"
        elif self.owned and self.distances:
            line += f"; traced to nobody (nearest '{_nearest(self)}' at hamming {self.hamming}, margin {self.margin})"
        return line


def _nearest(report: Report) -> str:
    return min(report.distances, key=report.distances.get) if report.distances else "-"


def ownership(key: Key, matched: torch.Tensor) -> dict[str, Any]:
    """Step 1: compare the match count to the key's threshold; p-value under the binomial null."""
    n = len(matched)
    count = int(matched.sum())
    d = key.decision
    return dict(
        owned=count >= d["threshold_count"],
        match_rate=count / n,
        matches=count,
        n_queries=n,
        threshold=d["threshold_count"] / n,
        threshold_how=d["how"],
        # "id" keys test agreement with the nearest of several IDs: a union bound over them
        p_value=min(1.0, d.get("candidates", 1) * binom_sf(count, n, d["null_rate"])),
        null_rate=d["null_rate"],
        alpha=d["alpha"],
    )


def trace(key: Key, labels: torch.Tensor, expected_user: str | None = None) -> dict[str, Any]:
    """Step 2: read bits (erasing foreign labels) and decode to the nearest registered ID.

    The host's own pattern competes as a candidate, so the unmodified host (or a model
    that drifted back to it) is traced to nobody. A user is named only when it beats
    every other candidate by `min_margin` bits and random bits would rarely come that close.
    """
    bits = key.read_bits(labels)
    candidates = {**key.users, HOST: key.host_bits()}
    dec = decode(bits, candidates)
    users_only = {k: v for k, v in dec.distances.items() if k != HOST}
    p_trace = tracing_p_value(dec.hamming, dec.valid_bits, max(len(key.users), 1)) if dec.hamming is not None else 1.0
    rule = key.decision
    traced = (
        dec.user
        if dec.user not in (None, HOST) and dec.margin >= rule.get("min_margin", 1) and p_trace <= rule.get("trace_alpha", 0.05)
        else None
    )
    reference = expected_user or traced
    bit_acc = None
    if reference is not None and reference in key.users:
        bit_acc = float((labels == key.target_labels(key.users[reference])).float().mean())
    return dict(
        traced_user=traced,
        hamming=dec.hamming,
        margin=dec.margin,
        runner_up=dec.runner_up,
        trace_p_value=p_trace,
        bit_acc=bit_acc,
        valid_bits=dec.valid_bits,
        distances=users_only | ({HOST: dec.distances[HOST]} if HOST in dec.distances else {}),
    )


def matched_mask(key: Key, labels: torch.Tensor) -> torch.Tensor:
    """Step-1 match per trigger: the label is one of the pair (watermarks) or the recorded label (fingerprints)."""
    rule = key.decision.get("match", "pair")
    if rule == "pair":
        return (labels == key.pairs[:, 0]) | (labels == key.pairs[:, 1])
    if rule == "label":
        return labels == key.pairs[:, 1]
    if rule == "id":  # the label the nearest registered ID asks for (MBW: the code is the evidence)
        agree = labels.view(1, -1) == torch.stack([key.target_labels(bits) for bits in key.users.values()])
        return agree[agree.sum(1).argmax()]
    raise ValueError(f"unknown match rule '{rule}' in key")


def verify_labels(key: Key, labels: torch.Tensor, expected_user: str | None = None) -> Report:
    """Both steps from the suspect's top-1 labels on the key's triggers.

    `expected_user` (evaluations only) fixes the ID that `bit_acc` is measured against.
    """
    step1 = ownership(key, matched_mask(key, labels))
    step2 = trace(key, labels, expected_user) if key.users and (step1["owned"] or expected_user) else {}
    if step2 and not step1["owned"]:
        step2["traced_user"] = None  # tracing is only claimed for a model that is ours
    return Report(method=key.method, **step1, **step2)


def verify_suspect(key: Key, suspect: Suspect, expected_user: str | None = None) -> Report:
    """Query the suspect once, with all n triggers in one batch, and verify its labels."""
    check_compatible(suspect, key.data["input_shape"], key.data["num_classes"])
    labels = suspect.labels(key.triggers)
    report = verify_labels(key, labels, expected_user)
    report.suspect = suspect.name
    return report
