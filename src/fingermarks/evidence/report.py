"""The one verdict shape every method fills (the JSON report of verify.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

HOST = "<host>"


@dataclass
class Report:
    """A verdict and the evidence behind it.

    `question`: ownership, tracing, integrity or piracy. `p_value` is the false-claim probability
    the rule can defend and `p_value_how` says what it assumes; `threshold`/`threshold_how` say
    where the decision line is and how it was set. Field names of earlier reports are kept.
    """

    method: str
    owned: bool
    match_rate: float
    matches: int
    n_queries: int
    threshold: float
    threshold_how: str
    p_value: float
    null_rate: float | None
    alpha: float
    question: str = "ownership"
    rule: str = ""
    p_value_how: str = ""
    traced_user: str | None = None
    hamming: int | None = None
    margin: int | None = None
    runner_up: str | None = None
    trace_p_value: float | None = None
    bit_acc: float | None = None
    valid_bits: int | None = None
    distances: dict[str, int] = field(default_factory=dict)
    #: every user named under a per-user bound (collusion: colluders tie, so `traced_user` names nobody),
    #: strongest evidence first; the chance that any innocent user is in it is <= `evidence["accusation_alpha"]`
    accused: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    suspect: str | None = None
    #: integrity only: whether the suspect differs from the shipped model, and how many recorded labels changed
    tampered: bool | None = None
    changed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.tampered is not None:
            pairs = self.evidence.get("pairs_changed"), self.evidence.get("pairs")
            return (f"{'TAMPERED' if self.tampered else 'intact'}: {self.changed} of {self.n_queries} recorded labels changed "
                    f"({pairs[0]} of {pairs[1]} pairs), allowance {self.evidence.get('allowance')}"
                    + (f", p-value {self.p_value:.2e}" if self.tampered else ""))
        verdict = "OWNED" if self.owned else "not owned"
        line = (
            f"{verdict}: {self.rule or 'match'} rate {self.match_rate:.3f} ({self.matches}/{self.n_queries}) vs threshold "
            f"{self.threshold:.3f}, p-value {self.p_value:.2e}"
        )
        if self.owned and self.traced_user is not None:
            line += f"; traced to '{self.traced_user}' (hamming {self.hamming}, margin {self.margin}, p {self.trace_p_value:.1e})"
        elif self.owned and self.distances:
            nearest = min(self.distances, key=self.distances.get)
            line += f"; traced to nobody (nearest '{nearest}' at hamming {self.hamming}, margin {self.margin})"
        if self.owned and self.accused and self.accused != [self.traced_user]:
            bound = self.evidence.get("accusation_alpha")
            line += f"; accused: {', '.join(repr(u) for u in self.accused)}" + (
                f" (chance any innocent is accused <= {bound:g})" if bound is not None else "")
        return line
