"""The combined verdict of several keys (evidence.combine): Holm's p-value, the union bound, the report."""

from __future__ import annotations

import numpy as np
import pytest

from fingermarks.evidence.combine import combine_p_values, combine_reports, holm_adjusted
from fingermarks.evidence.report import Report

ALPHA = 0.05


def report(method: str, question: str, owned: bool, p: float, alpha: float = 1e-3, **extra) -> Report:
    return Report(method=method, owned=owned, match_rate=0.5, matches=8, n_queries=16, threshold=0.8,
                  threshold_how=f"{method}'s rule", p_value=p, null_rate=0.5, alpha=alpha, question=question,
                  rule={"tracing": "code", "piracy": "uap"}.get(question, "pair"), p_value_how=f"{method}'s null", **extra)


def test_holm_matches_the_textbook_step_down():
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjusted([0.5]) == [0.5]
    assert holm_adjusted([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_the_combined_p_value_is_k_times_the_smallest_capped_at_one():
    c = combine_p_values([False, True], [0.2, 0.004], [1e-3, 1e-2])
    assert c["owned"] and c["p_value"] == pytest.approx(0.008) and c["lead"] == 1
    assert c["alpha"] == pytest.approx(0.011)  # the union bound of the decision
    assert combine_p_values([False, False], [0.7, 0.8], [0.5, 0.9])["p_value"] == 1.0
    assert combine_p_values([False, False], [0.7, 0.8], [0.5, 0.9])["alpha"] == 1.0


@pytest.mark.parametrize("bad", [([True], [0.1, 0.2], [0.1, 0.1]), ([], [], []), ([True], [1.5], [0.1]), ([True], [0.1], [0.0])])
def test_bad_input_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="combine:"):
        combine_p_values(*bad)


@pytest.mark.parametrize("dependence", ["independent", "identical", "anti"])
def test_false_claims_stay_below_alpha_when_every_key_is_null(dependence):
    """Monte Carlo: each key's p-value uniform under the null, however they depend on each other. Neither the
    combined p-value at ALPHA nor 'any key owned at alpha/K' claims an innocent model more often than ALPHA."""
    rng = np.random.default_rng(0)
    trials, k = 200_000, 3
    u = rng.random((trials, 1 if dependence != "independent" else k))
    if dependence == "independent":
        p = u
    elif dependence == "identical":
        p = np.repeat(u, k, 1)
    else:  # negatively dependent: the worst case for the union bound is disjoint rejection regions
        p = np.concatenate([(u + s / k) % 1.0 for s in range(k)], 1)
    combined = np.minimum(1.0, k * p.min(1))
    rate = float((combined <= ALPHA).mean())
    se = (ALPHA * (1 - ALPHA) / trials) ** 0.5
    assert rate <= ALPHA + 4 * se
    # the decision rule itself: owned when any key's own test says owned, each at alpha/K
    any_owned = float((p <= ALPHA / k).any(1).mean())
    assert any_owned <= ALPHA + 4 * se
    # and through combine_p_values, on a sample
    for row in p[:2000]:
        c = combine_p_values(list(row <= ALPHA / k), list(row), [ALPHA / k] * k)
        assert c["alpha"] == pytest.approx(ALPHA) and (c["owned"] <= (c["p_value"] <= ALPHA))


def test_the_report_keeps_each_keys_report_and_traces_through_the_tracing_key():
    fm = report("fingermarks", "tracing", True, 1e-6, traced_user="alice", hamming=0, margin=9,
                distances={"alice": 0, "bob": 9}, trace_p_value=1e-6, valid_bits=16)
    uap = report("uap", "piracy", False, 0.3, alpha=0.01, evidence={"mode": "outputs"})
    r = combine_reports([fm, uap])
    assert r.owned and r.traced_user == "alice" and r.distances == {"alice": 0, "bob": 9}
    assert r.p_value == pytest.approx(2e-6) and r.alpha == pytest.approx(0.011)
    assert r.method == "fingermarks+uap" and r.question == "tracing+piracy" and r.n_queries == 32
    assert [k["key"] for k in r.evidence["keys"]] == ["key 1 (fingermarks)", "key 2 (uap)"]
    assert r.evidence["keys"][1]["evidence"]["mode"] == "outputs"
    assert r.evidence["combination"]["owned_by"] == ["key 1 (fingermarks)"]
    assert set(r.to_dict()) == set(fm.to_dict())  # the one report shape


def test_a_distilled_copy_is_owned_through_the_fingerprint_with_no_user_named():
    fm = report("fingermarks", "tracing", False, 0.4, distances={"alice": 7, "bob": 8}, hamming=7, margin=1)
    uap = report("uap", "piracy", True, 0.002, alpha=0.01)
    r = combine_reports([fm, uap])
    assert r.owned and r.traced_user is None and r.p_value == pytest.approx(0.004)
    assert r.evidence["combination"]["lead"] == "key 2 (uap)" and r.threshold_how.endswith("uap's rule")
    assert not combine_reports([fm, report("uap", "piracy", False, 0.5)]).owned
    # colluders accused by the tracing key (averaged copies: nobody traced) stay accused, under its own bound
    colluded = report("fingermarks", "tracing", True, 1e-5, distances={"alice": 3, "bob": 3}, accused=["alice", "bob"],
                      evidence={"accusation_alpha": 1e-3})
    r = combine_reports([colluded, uap])
    assert r.accused == ["alice", "bob"] and r.evidence["accusation_alpha"] == 1e-3


def test_an_integrity_key_is_not_combined():
    tampered = report("fragile", "integrity", True, 0.01)
    with pytest.raises(ValueError, match="integrity"):
        combine_reports([report("uap", "piracy", True, 0.01), tampered])
