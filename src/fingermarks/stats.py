"""The statistics behind a verdict: binomial tails, thresholds and tracing evidence."""

from __future__ import annotations

import math


def binom_sf(k: int, n: int, q: float) -> float:
    """P[X >= k] for X ~ Binomial(n, q), exact (n is the trigger count: small)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    q = min(max(q, 0.0), 1.0)
    return min(1.0, sum(math.comb(n, t) * q**t * (1 - q) ** (n - t) for t in range(k, n + 1)))


def binom_cdf(k: int, n: int, q: float) -> float:
    """P[X <= k] for X ~ Binomial(n, q)."""
    return 1.0 - binom_sf(k + 1, n, q)


def match_threshold(n: int, q: float, alpha: float) -> int:
    """Smallest match count whose chance under the null Binomial(n, q) is at most alpha."""
    for k in range(n + 1):
        if binom_sf(k, n, q) <= alpha:
            return k
    return n + 1


def null_rate(matches: int, trials: int, floor: float) -> float:
    """Per-trigger chance of a match for an unrelated model.

    Laplace-smoothed rate of held-out independent models, never below `floor` (the rate
    of a model answering uniformly at random), so a lucky calibration cannot make the
    test too lenient.
    """
    observed = (matches + 1) / (trials + 2) if trials > 0 else floor
    return max(observed, floor)


def tracing_p_value(distance: int, valid_bits: int, users: int) -> float:
    """Chance that random bits lie within `distance` of some registered ID (union bound over users)."""
    if valid_bits == 0:
        return 1.0
    return min(1.0, users * binom_cdf(distance, valid_bits, 0.5))
