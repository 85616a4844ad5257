"""Tests for fingermarks.stats: binomial tails, the ownership threshold, the null rate and tracing evidence."""

from __future__ import annotations

import math

import pytest
import torch

from fingermarks.stats import binom_cdf, binom_sf, match_threshold, null_rate, tracing_p_value

torch.set_num_threads(1)


def pmf(t: int, n: int, q: float) -> float:
    return math.comb(n, t) * q**t * (1 - q) ** (n - t)


@pytest.mark.parametrize(("n", "q"), [(30, 0.5), (30, 0.2), (8, 0.1), (16, 0.75), (5, 0.0), (5, 1.0)])
def test_binom_tails_equal_brute_force_sums(n: int, q: float) -> None:
    for k in range(-1, n + 2):
        sf = sum(pmf(t, n, q) for t in range(max(k, 0), n + 1))
        cdf = sum(pmf(t, n, q) for t in range(0, min(k, n) + 1))
        assert binom_sf(k, n, q) == pytest.approx(sf, abs=1e-12)
        assert binom_cdf(k, n, q) == pytest.approx(cdf, abs=1e-12)


def test_binom_known_values_n30_fair_coin() -> None:
    # symmetry of Binomial(30, 1/2): P[X >= 15] = P[X <= 15] = (1 + P[X = 15]) / 2
    half = math.comb(30, 15) / 2**30
    assert binom_sf(15, 30, 0.5) == pytest.approx((1 + half) / 2, rel=1e-12)
    assert binom_cdf(15, 30, 0.5) == pytest.approx((1 + half) / 2, rel=1e-12)
    assert binom_sf(30, 30, 0.5) == pytest.approx(2.0**-30, rel=1e-12)
    assert binom_cdf(0, 30, 0.5) == pytest.approx(2.0**-30, rel=1e-12)
    assert binom_sf(0, 30, 0.5) == 1.0 and binom_sf(31, 30, 0.5) == 0.0
    assert binom_cdf(30, 30, 0.5) == pytest.approx(1.0) and binom_cdf(-1, 30, 0.5) == pytest.approx(0.0)


@pytest.mark.parametrize(("n", "q", "alpha"), [(30, 0.2, 1e-3), (30, 0.5, 0.05), (8, 0.2, 0.01), (30, 0.05, 1e-6)])
def test_match_threshold_is_the_smallest_count_with_tail_at_most_alpha(n: int, q: float, alpha: float) -> None:
    k = match_threshold(n, q, alpha)
    assert 0 < k <= n
    assert binom_sf(k, n, q) <= alpha
    assert binom_sf(k - 1, n, q) > alpha


def test_match_threshold_unreachable_alpha_is_beyond_n() -> None:
    # even n matches out of n is likelier than alpha: no count can decide ownership
    assert match_threshold(4, 0.5, 1e-3) == 5


def test_null_rate_laplace_smoothing_and_floor() -> None:
    assert null_rate(10, 60, floor=0.0) == pytest.approx(11 / 62)
    assert null_rate(0, 60, floor=0.0) == pytest.approx(1 / 62)  # never zero: a lucky calibration is smoothed
    assert null_rate(0, 60, floor=0.2) == pytest.approx(0.2)  # never below the chance rate of a random model
    assert null_rate(59, 60, floor=0.2) == pytest.approx(60 / 62)
    assert null_rate(0, 0, floor=0.2) == pytest.approx(0.2)  # no calibration models: the floor


def test_tracing_p_value_union_bound() -> None:
    assert tracing_p_value(0, 16, 1) == pytest.approx(2.0**-16)
    assert tracing_p_value(2, 16, 3) == pytest.approx(3 * (1 + 16 + 120) / 2**16)
    assert tracing_p_value(8, 16, 10) == 1.0  # clipped to a probability
    assert tracing_p_value(0, 0, 5) == 1.0  # no readable bit: no evidence
    assert tracing_p_value(1, 30, 4) < tracing_p_value(2, 30, 4) < tracing_p_value(2, 20, 4)
