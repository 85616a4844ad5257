"""Null distributions behind the decision rules: pure functions of counts, testable without models.

- The **code null** is exact and needs no model pool: an innocent suspect was made without the
  key, so its labels are independent of the secret user IDs; on each trigger whose label is one of
  the pair, agreement with a user's ID is a fair coin. Agreements with one user are then
  Binomial(v, 1/2) for v readable triggers. An ID is uniform on the region of words it was allowed
  to be drawn from (`Key.id_acceptance`: that region's share of all words), so its chance of any
  outcome is at most 1/acceptance times the uniform chance; a union over the registered users
  bounds the chance that any of them agrees this well.
- **Accusation** (collusion): the same null per user, union over the U registered users, names
  every user whose own score is improbable for an innocent; an innocent ID is independent of what
  the colluders built, so the chance of accusing any innocent is <= alpha whatever they did.
- The **pool null** is for statistics with no secret behind them (IPGuard's recorded label, the
  paper's pair rule): a beta-binomial fitted to the match counts of the owner's pool of
  independently trained models, because matches within one model are correlated (a plain
  binomial on pooled trials understates the tail). It extrapolates beyond the pool, so the report
  also gives the pool's own, empirical p-value, which can never be below 1/(K+1).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from scipy import optimize, stats


@functools.lru_cache(maxsize=1 << 16)  # pure: accusing a registry (or a sweep of suspects) asks the same tails again
def weighted_sign_sf(score: float, v_one: int, v_zero: int, w_one: float = 1.0, w_zero: float = 1.0) -> float:
    """P[S >= score] for S = w_one*(2*X1 - v_one) + w_zero*(2*X0 - v_zero), X1 ~ Bin(v_one, 1/2), X0 ~ Bin(v_zero, 1/2).

    The per-user score of the code rule under the null: triggers read as j (v_one) and as i
    (v_zero) each agree with a secret bit by a fair coin; agreements count +w, disagreements -w.
    """
    x1 = np.arange(v_one + 1)
    p1 = stats.binom.pmf(x1, v_one, 0.5)
    s1 = w_one * (2 * x1 - v_one)
    # a score equal to a lattice point up to rounding counts as reaching it (conservative): weights such as
    # 13 / 115 make scores inexact in floating point
    tol = 1e-9 * (1.0 + w_one * v_one + w_zero * v_zero)
    if w_zero == 0 or v_zero == 0:
        return float(min(1.0, p1[s1 >= score - tol].sum()))
    need = (score - tol - s1 + w_zero * v_zero) / (2 * w_zero)  # X0 >= need
    k = np.ceil(need)
    tail = stats.binom.sf(k - 1, v_zero, 0.5)
    return float(min(1.0, (p1 * tail).sum()))


def union_p_value(sf: float, acceptance: Sequence[float]) -> float:
    """Union over the registered users of a one-ID tail `sf`, each divided by its ID's draw-region share."""
    return float(min(1.0, sum(sf / a for a in acceptance))) if acceptance else 1.0


def union_accusations(sf: np.ndarray, acceptance: Sequence[float]) -> np.ndarray:
    """Per user, `U * sf_u / acceptance_u` (capped at 1) from each user's own tail `sf_u`."""
    if len(acceptance) != len(sf):
        raise ValueError(f"{len(sf)} scores for {len(acceptance)} acceptance shares")
    return np.minimum(1.0, len(sf) * np.asarray(sf, dtype=float) / np.asarray(acceptance, dtype=float))


def code_p_value(score: float, v_one: int, v_zero: int, acceptance: Sequence[float], w_one: float = 1.0, w_zero: float = 1.0) -> float:
    """Union bound over registered users of the chance an innocent ID scores at least `score`."""
    if not acceptance:
        return 1.0
    return union_p_value(weighted_sign_sf(score, v_one, v_zero, w_one, w_zero), acceptance)


def code_threshold(v_one: int, v_zero: int, acceptance: Sequence[float], alpha: float, w_one: float = 1.0,
                   w_zero: float = 1.0) -> float:
    """Smallest score with `code_p_value <= alpha` (inf when none is reachable).

    The p-value is a tail, non-increasing in the score, so the smallest such lattice score is found by
    bisection: with weights such as 22 / 101 the lattice has thousands of distinct scores, not ~v."""
    scores = sorted({w_one * (2 * a - v_one) + w_zero * (2 * b - v_zero) for a in range(v_one + 1) for b in range(v_zero + 1)})
    lo, hi = 0, len(scores)
    while lo < hi:
        mid = (lo + hi) // 2
        if code_p_value(scores[mid], v_one, v_zero, acceptance, w_one, w_zero) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return float(scores[lo]) if lo < len(scores) else math.inf


def accusation_p_values(scores: Sequence[float], v_one: int, v_zero: int, acceptance: Sequence[float],
                        w_one: float = 1.0, w_zero: float = 1.0) -> np.ndarray:
    """Per registered user, `U * P[S >= score_u] / acceptance_u` (capped at 1): the accusation p-values.

    An innocent user's ID was drawn without looking at the suspect, so whatever the colluders did
    (average their weights, vote, flip bits), that user's score is the null's S and its chance to
    reach `score_u` is at most the fair-coin tail divided by the share of words the ID could be
    drawn from. Accusing every user whose value is <= alpha therefore accuses an innocent with
    probability <= alpha: a union over at most U innocent users of chances <= alpha / U each.
    Keys draw IDs at a minimum distance, so an innocent drawn before the colluders only pushed their
    IDs away from its own (checked by Monte Carlo on drawn registries in tests/test_accusation.py).
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return np.ones(0)
    if len(acceptance) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(acceptance)} acceptance shares")
    # one tail per distinct score: a registry of thousands shares a few dozen score values
    tail = {s: weighted_sign_sf(s, v_one, v_zero, w_one, w_zero) for s in set(scores.tolist())}
    return union_accusations(np.array([tail[s] for s in scores.tolist()]), acceptance)


class IntegerSignNull:
    """The distribution of S = sum_k w_k s_k for integer weights w_k >= 0 and independent fair signs s_k.

    The code rule's null when a suspect was read several times (`CodeRule`, repeated reads): each
    trigger carries its own weight (how far its reads lean to j or i from the suspect's mean), so
    the two-weight lattice of `weighted_sign_sf` no longer fits. Weights are integers (the rule
    quantises them, and the statistic it compares is the quantised one), so every score is an
    integer and the tail is exact with no floating-point tolerance. Built by convolving one
    Binomial(c, 1/2) per distinct weight (c triggers share it): about (n + distinct) x 2W additions.
    """

    def __init__(self, weights: Sequence[int]) -> None:
        w = np.asarray(weights, dtype=np.int64)
        if w.ndim != 1 or (w < 0).any():
            raise ValueError("IntegerSignNull needs a 1-D array of non-negative integer weights")
        self.total = int(w.sum())
        pmf = np.zeros(2 * self.total + 1)
        pmf[self.total] = 1.0  # index = score + total
        values, counts = np.unique(w[w > 0], return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            # count triggers of weight `value`: the score moves by value * (2X - count), X ~ Bin(count, 1/2)
            out = np.zeros_like(pmf)
            for x, p in enumerate(stats.binom.pmf(np.arange(count + 1), count, 0.5)):
                shift = value * (2 * x - count)
                lo, hi = max(0, shift), min(len(pmf), len(pmf) + shift)
                out[lo:hi] += p * pmf[lo - shift:hi - shift]
            pmf = out
        self.pmf = pmf
        self.tail = np.minimum(1.0, np.cumsum(pmf[::-1])[::-1])  # tail[i] = P[S >= i - total]

    def sf(self, score: int) -> float:
        """P[S >= score] (exact: scores are integers)."""
        if math.isinf(score):
            return 0.0 if score > 0 else 1.0
        i = int(math.ceil(score)) + self.total
        return 1.0 if i <= 0 else (0.0 if i >= len(self.tail) else float(self.tail[i]))

    def p_value(self, score: int, acceptance: Sequence[float]) -> float:
        """Union over the registered users (each tail divided by its ID's draw-region share), as `code_p_value`."""
        return union_p_value(self.sf(score), acceptance)

    def threshold(self, acceptance: Sequence[float], alpha: float) -> float:
        """Smallest reachable score with `p_value <= alpha` (inf when none is)."""
        share = sum(1.0 / a for a in acceptance)
        ok = np.nonzero((self.tail * share <= alpha) & (self.pmf > 0))[0]
        return float(ok[0] - self.total) if len(ok) else math.inf

    def accusation_p_values(self, scores: Sequence[int], acceptance: Sequence[float]) -> np.ndarray:
        """Per user, `U * P[S >= score_u] / acceptance_u` (capped at 1), as `accusation_p_values`."""
        return union_accusations(np.array([self.sf(s) for s in scores]), acceptance)


def accused(names: Sequence[str], p_values: Sequence[float], alpha: float) -> list[str]:
    """The users whose accusation p-value is <= alpha, strongest evidence first (ties in registry order)."""
    order = np.argsort(np.asarray(p_values, dtype=float), kind="stable")
    return [names[k] for k in order if p_values[k] <= alpha]


# -- pool null ---------------------------------------------------------------------------


def fit_beta_binomial(counts: Sequence[int], n: int) -> tuple[float, float]:
    """Maximum-likelihood beta-binomial (a, b) for match counts out of n, one count per pool model.

    A pool where every model matched nothing still gets a proper (small-mean) fit: half a
    pseudo-match is added to the mean so the fit never claims a zero chance.
    """
    x = np.asarray(counts, dtype=float)
    if len(x) < 2:
        raise ValueError("a beta-binomial fit needs at least 2 pool models")
    mean = (x.sum() + 0.5) / (len(x) * n + 1.0)

    def nll(theta: np.ndarray) -> float:
        a, b = np.exp(theta)
        return -float(stats.betabinom.logpmf(x, n, a, b).sum())

    # start from a moderately overdispersed fit with the pool's mean
    start = np.log([mean * 2.0, (1 - mean) * 2.0])
    res = optimize.minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    a, b = np.exp(res.x)
    # keep the fitted mean from going below the smoothed pool mean (a pool of zeros would drive it to 0)
    if a / (a + b) < mean:
        scale = a + b
        a, b = mean * scale, (1 - mean) * scale
    return float(a), float(b)


def beta_binomial_sf(count: int, n: int, a: float, b: float) -> float:
    """P[X >= count] under the fitted beta-binomial."""
    if count <= 0:
        return 1.0
    return float(stats.betabinom.sf(count - 1, n, a, b))


def pool_p_value(count: int, pool_counts: Sequence[int]) -> float:
    """The pool's own p-value: (1 + models at least this high) / (K + 1), exact when the suspect is
    exchangeable with the pool, and never below 1/(K+1)."""
    pool = np.asarray(pool_counts)
    return float((1 + (pool >= count).sum()) / (len(pool) + 1))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion k/n."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf((1 - confidence) / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - (1 - confidence) / 2, k + 1, n - k))
    return lo, hi
