"""One verdict from several keys of the same host: e.g. a FingerMarks key (ownership and the leaking user,
caught through fine-tuning) and a UAP fingerprint (piracy, caught through distillation).

The combined decision is "owned when any key's own rule says owned". Its false-claim probability for a
model made without our keys is at most the sum of the keys' alphas (union bound), whatever the
dependence between the keys. The combined p-value is Holm's (equivalently Bonferroni's) for the union
null "no key sees our model": min(1, K x the smallest key p-value), valid under the same condition, that
each key's own p-value is. Holm's adjusted p-value per key says which keys still stand after the
correction. The traced user comes from the key that traces (the code or pair rule), under its own bound.

`combine_p_values` is the maths, `combine_reports` fills the one Report shape from the keys' reports.
"""

from __future__ import annotations

from typing import Any, Sequence

from fingermarks.evidence.report import Report

#: questions a combined ownership verdict can draw on (an integrity key answers another question)
COMBINABLE = ("ownership", "tracing", "piracy")


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: reject key k at level alpha iff its
    adjusted p-value is <= alpha; the family-wise error rate is <= alpha under any dependence."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    adjusted, running = [0.0] * k, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def combine_p_values(owned: Sequence[bool], p_values: Sequence[float], alphas: Sequence[float]) -> dict[str, Any]:
    """The combined verdict of K keys from each key's decision, p-value and alpha.

    Returns owned (any key owned), p_value (Holm's smallest adjusted p = min(1, K min p)), alpha (the
    union bound on the decision's false-claim probability, sum of alphas capped at 1), holm (adjusted
    p-values per key) and lead (the index of the key whose evidence is strongest, owned keys first)."""
    if not (len(owned) == len(p_values) == len(alphas)) or not p_values:
        raise ValueError(f"combine: {len(owned)} decisions, {len(p_values)} p-values and {len(alphas)} alphas; need the same number, at least one")
    if any(not 0.0 <= float(p) <= 1.0 for p in p_values) or any(not 0.0 < float(a) <= 1.0 for a in alphas):
        raise ValueError("combine: p-values must lie in [0, 1] and alphas in (0, 1]")
    holm = holm_adjusted(p_values)
    lead = min(range(len(p_values)), key=lambda i: (not owned[i], holm[i]))
    return {"owned": any(bool(o) for o in owned), "p_value": min(holm), "alpha": min(1.0, sum(float(a) for a in alphas)),
            "holm": holm, "lead": lead, "keys": len(p_values)}


def combine_reports(reports: Sequence[Report], names: Sequence[str] | None = None) -> Report:
    """One Report from the reports of several keys on the same suspect; each key's report is kept in
    `evidence["keys"]`. The statistic and threshold shown are the lead key's; the user is the tracing key's."""
    names = list(names) if names is not None else [f"key {k + 1} ({r.method})" for k, r in enumerate(reports)]
    for name, r in zip(names, reports):
        if r.question not in COMBINABLE:
            raise ValueError(f"{name} answers '{r.question}', not ownership: verify it on its own")
    c = combine_p_values([r.owned for r in reports], [r.p_value for r in reports], [r.alpha for r in reports])
    lead = reports[c["lead"]]
    tracing = next((r for r in reports if r.distances), None)
    questions = "+".join(dict.fromkeys(r.question for r in reports))
    k = len(reports)
    report = Report(
        method="+".join(r.method for r in reports), owned=c["owned"], question=questions,
        rule="+".join(r.rule or "match" for r in reports),
        match_rate=lead.match_rate, matches=lead.matches, n_queries=sum(r.n_queries for r in reports),
        threshold=lead.threshold,
        threshold_how=(f"owned when any of the {k} keys' own rules says owned; the statistic and threshold shown are "
                       f"those of {names[c['lead']]}, the strongest evidence: {lead.threshold_how}"),
        p_value=c["p_value"],
        p_value_how=(f"Holm over the {k} keys (= Bonferroni for the union null 'no key sees our model'): {k} x the "
                     f"smallest key p-value, capped at 1; valid under any dependence between the keys when each key's "
                     f"p-value is valid; the decision's false-claim probability is <= {c['alpha']:g} (union bound: "
                     f"the sum of the keys' alphas)"),
        null_rate=lead.null_rate, alpha=c["alpha"],
        evidence={"combination": {"rule": "any key owned", "p_value": "holm", "keys": names, "lead": names[c["lead"]],
                                  "holm_p_values": c["holm"], "owned_by": [n for n, r in zip(names, reports) if r.owned]},
                  "keys": [dict(r.to_dict(), key=name) for name, r in zip(names, reports)]},
    )
    if tracing is not None:  # the user comes from the key that traces, under that key's own bound
        report.traced_user = tracing.traced_user if c["owned"] else None
        report.hamming, report.margin, report.runner_up = tracing.hamming, tracing.margin, tracing.runner_up
        report.trace_p_value, report.bit_acc, report.valid_bits = tracing.trace_p_value, tracing.bit_acc, tracing.valid_bits
        report.distances = dict(tracing.distances)
        report.accused = list(tracing.accused) if c["owned"] else []
        if "accusation_alpha" in tracing.evidence:
            report.evidence["accusation_alpha"] = tracing.evidence["accusation_alpha"]
    return report
