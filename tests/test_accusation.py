"""Collusion tracing: every user whose own agreement is improbable for an innocent is accused, and an
innocent user is accused with probability <= trace_alpha whatever the colluders built."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fingermarks.codes import draw_ids
from fingermarks.evidence.nulls import accusation_p_values, accused, weighted_sign_sf
from fingermarks.key import Key
from fingermarks.secret import KeySecret
from fingermarks.verification import verify_labels

torch.set_num_threads(1)


# -- the pure functions ----------------------------------------------------------------------------


def test_accusation_p_value_is_the_users_tail_times_users_over_acceptance() -> None:
    scores = [2 * 14 - 16, 2 * 14 - 16, 2 * 8 - 16]  # agreements 14, 14, 8 of 16 readable triggers
    p = accusation_p_values(scores, 16, 0, [1.0, 0.5, 1.0])
    tail = stats.binom.sf(13, 16, 0.5)
    assert p == pytest.approx([3 * tail, 3 * tail / 0.5, 1.0])
    # weighted scores take the same tail as the code rule's ownership null
    assert accusation_p_values([3.0], 5, 4, [1.0], 2.0, 0.5)[0] == pytest.approx(weighted_sign_sf(3.0, 5, 4, 2.0, 0.5))
    with pytest.raises(ValueError, match="2 scores for 1 acceptance"):
        accusation_p_values([1.0, 2.0], 4, 0, [1.0])


def test_accused_keeps_users_at_or_below_alpha_strongest_first() -> None:
    assert accused(["a", "b", "c", "d"], [0.02, 1e-4, 0.5, 1e-4], 0.01) == ["b", "d"]
    assert accused(["a"], [0.5], 0.01) == []


# -- Monte Carlo: innocents are accused at most at rate alpha ---------------------------------------


def collude(ids: np.ndarray, k: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """The bits a suspect built from the first k rows of `ids` (trials, users, n) answers: -1 is erased.

    vote: majority of the k colluders, a coin on a tie; average: where they disagree, an averaged model
    answers a third label (erased) half the time and a coin otherwise; zeros: they answer bit 0 wherever
    they disagree (a deterministic choice, so no coin at all)."""
    c = ids[:, :k]
    ones = c.sum(1)
    agree = (ones == 0) | (ones == k)
    coin = rng.integers(0, 2, ones.shape)
    if how == "vote":
        return np.where(2 * ones > k, 1, np.where(2 * ones < k, 0, coin))
    if how == "average":
        return np.where(agree, c[:, 0], np.where(rng.random(ones.shape) < 0.5, -1, coin))
    if how == "zeros":
        return np.where(agree, c[:, 0], 0)
    raise ValueError(how)


def accusations(ids: np.ndarray, suspect: np.ndarray, acceptance: np.ndarray, alpha: float, w1: float, w0: float):
    """Per trial, the users accused (boolean (trials, users)) by the code rule's score on bits (bit 1 read as j)."""
    reads_one, reads_zero = suspect == 1, suspect == 0
    agree = ids == suspect[:, None, :]
    a1, a0 = (agree & reads_one[:, None]).sum(2), (agree & reads_zero[:, None]).sum(2)
    v1, v0 = reads_one.sum(1), reads_zero.sum(1)
    scores = w1 * (2 * a1 - v1[:, None]) + w0 * (2 * a0 - v0[:, None])
    return np.stack([accusation_p_values(scores[t].tolist(), int(v1[t]), int(v0[t]), acceptance[t].tolist(), w1, w0) <= alpha
                     for t in range(len(ids))])


@pytest.mark.parametrize("how", ["vote", "average", "zeros"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("w1, w0", [(1.0, 1.0), (1.0, 0.5)])
def test_no_innocent_is_accused_beyond_alpha_with_fresh_random_ids(k, how, w1, w0) -> None:
    trials, users, n, alpha = 2000, 10, 30, 0.1
    rng = np.random.default_rng(1000 * k + len(how) + int(10 * w0))
    ids = rng.integers(0, 2, (trials, users, n))
    hit = accusations(ids, collude(ids, k, how, rng), np.ones((trials, users)), alpha, w1, w0)
    innocent_rate = hit[:, k:].any(1).mean()
    # the bound, with three standard errors of Monte Carlo slack
    assert innocent_rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials), innocent_rate
    if how == "vote":  # not vacuous: a colluder agrees on ~3/4 of 30 triggers and is often accused
        assert hit[:, :k].any(1).mean() > 0.3


@pytest.mark.parametrize("how", ["vote", "average"])
def test_no_innocent_is_accused_beyond_alpha_with_a_registry_drawn_at_min_distance(how) -> None:
    """The registry as keys draw it: IDs at distance >= 12 from each other and from the reserved words,
    each divided by its own acceptance share; colluders are users 3 and 4 of 10 (drawn in the middle)."""
    trials, users, n, alpha = 300, 10, 30, 0.1
    g = torch.Generator().manual_seed(7)
    reserved = torch.stack([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
    ids, acceptance = [], []
    for _ in range(trials):
        drawn, share = draw_ids(users, n, 12, g, reserved=reserved, return_acceptance=True)
        ids.append(drawn.numpy())
        acceptance.append(share)
    ids, acceptance = np.stack(ids), np.array(acceptance)
    order = [3, 4] + [u for u in range(users) if u not in (3, 4)]  # colluders first
    ids, acceptance = ids[:, order], acceptance[:, order]
    rng = np.random.default_rng(3)
    hit = accusations(ids, collude(ids, 2, how, rng), acceptance, alpha, 1.0, 1.0)
    assert hit[:, 2:].any(1).mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


# -- the code rule fills `accused` -----------------------------------------------------------------


N = 48
USERS = [f"user{u}" for u in range(8)]


@pytest.fixture(scope="module")
def key() -> Key:
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, 10, (N,), generator=g)
    j = (i + torch.randint(1, 10, (N,), generator=g)) % 10
    key = Key(method="fingermarks", triggers=torch.rand(N, 1, 8, 8, generator=g), pairs=torch.stack([i, j], 1),
              swap=torch.rand(N, generator=g) < 0.5, host_sha256="0" * 64,
              data={"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]},
              decision={"rule": "code", "alpha": 1e-3, "min_margin": 1, "trace_alpha": 1e-3},
              secret=KeySecret.from_text("accusation").hex)
    key.add_users(USERS, None, 12)
    return key


def vote_labels(key: Key, colluders: list[str]) -> torch.Tensor:
    """Majority of the colluders' target labels; a tie goes to the first colluder's label (a deterministic
    tie-break that favours nobody but user 0 of the group)."""
    targets = torch.stack([key.target_labels(key.users[u]) for u in colluders])
    votes = torch.stack([(targets == t).sum(0) for t in targets])
    return targets.gather(0, votes.argmax(0, keepdim=True)).squeeze(0)


def test_a_single_users_copy_is_traced_and_accused_alone(key: Key) -> None:
    report = verify_labels(key, key.target_labels(key.users["user5"]))
    assert report.traced_user == "user5" and report.accused == ["user5"]
    assert report.evidence["accusation_p_values"]["user5"] <= 1e-3 and report.evidence["accusation_alpha"] == 1e-3


def test_majority_vote_of_three_accuses_colluders_and_no_innocent(key: Key) -> None:
    colluders = ["user1", "user4", "user6"]
    report = verify_labels(key, vote_labels(key, colluders))
    assert report.owned and report.accused and set(report.accused) <= set(colluders), report.accused
    assert "accused:" in report.summary() or report.accused == [report.traced_user]
    p = report.evidence["accusation_p_values"]
    assert list(p) == report.accused and sorted(p.values()) == list(p.values())


def test_an_unrelated_model_accuses_nobody(key: Key) -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.where(torch.rand(N, generator=g) < 0.5, key.pairs[:, 0], key.pairs[:, 1])
    report = verify_labels(key, labels)
    assert report.accused == [] and report.traced_user is None
    assert report.to_dict()["accused"] == []


# -- robustness rows count an accused colluder as traced, any accused outsider as innocent -----------


def test_robustness_row_counts_accused_colluders_and_accused_innocents(key: Key) -> None:
    from types import SimpleNamespace

    from fingermarks.evaluation.robustness import curve_row

    key.min_distance = key.achieved_distance()
    attack = SimpleNamespace(name="collude_vote", axis="colluders", default=3)
    report = verify_labels(key, vote_labels(key, ["user1", "user4", "user6"]))
    report.traced_user, report.accused = None, ["user4", "user6"]  # colluders tie: nobody traced, two accused
    row = curve_row(attack, 3, report, 0.9, 0.9, key, "user1", "digits", colluders=["user1", "user4", "user6"])
    assert row["traced_correctly"] and not row["innocent_accused"] and row["accused"] == "user4;user6"
    report.accused = ["user4", "user2"]  # one colluder and one innocent: traced, and an innocent accusation
    row = curve_row(attack, 3, report, 0.9, 0.9, key, "user1", "digits", colluders=["user1", "user4", "user6"])
    assert row["traced_correctly"] and row["innocent_accused"]
    report.accused = []  # nobody named: neither
    row = curve_row(attack, 3, report, 0.9, 0.9, key, "user1", "digits", colluders=["user1", "user4", "user6"])
    assert not row["traced_correctly"] and not row["innocent_accused"] and row["accused"] is None
    report.traced_user = "user2"  # a traced innocent still counts, with or without the accused list
    row = curve_row(attack, 3, report, 0.9, 0.9, key, "user1", "digits", colluders=["user1", "user4", "user6"])
    assert not row["traced_correctly"] and row["innocent_accused"] and row["accused"] == "user2"


def test_verify_printout_and_evidence_page_show_the_accused(key: Key) -> None:
    from fingermarks.reports import Verification, render_html

    report = verify_labels(key, vote_labels(key, ["user1", "user4", "user6"]))
    report.traced_user = None  # as when the colluders tie
    assert f"accused: {', '.join(repr(u) for u in report.accused)}" in report.summary()
    v = Verification(suspect="vote.onnx", report=report)
    assert "the evidence accuses" in v.sentence() and all(repr(u) in v.sentence() for u in report.accused)
    page = render_html(v)
    assert "accused users" in page and all(u in page for u in report.accused)


# -- the sizing maths of benchmarks/collusion_tracing.py ---------------------------------------------


def test_collusion_sizing_maths_matches_simulation() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "collusion_tracing.py"
    spec = importlib.util.spec_from_file_location("collusion_tracing", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    need = bench.needed_agreement(64, 100, 1e-3)
    assert need == 50 and 100 * stats.binom.sf(need - 1, 64, 0.5) <= 1e-3 < 100 * stats.binom.sf(need - 2, 64, 0.5)
    assert bench.needed_agreement(10, 100, 1e-3) is None  # 10 triggers can never clear 100 users at 1e-3
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2, (20000, 3, 40))
    for k, exact in ((2, bench.p_accuse_vote2(40, 30)), (3, bench.p_accuse_vote3(40, 30))):
        agree = (ids[:, :k] == collude(ids, k, "vote", rng)[:, None]).sum(2)
        assert (agree.max(1) >= 30).mean() == pytest.approx(exact, abs=0.015)
