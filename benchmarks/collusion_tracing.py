"""What collusion tracing needs: how many triggers let the code rule accuse a colluder among U users.

    python benchmarks/collusion_tracing.py [--users 100] [--alpha 1e-3] [--readable 1.0] [--min-distance 12]
        [--n 30 40 48 64 80 96 128] [--trials 300]

Pure maths, no model. A user is accused when U x P[Bin(v, 1/2) >= agreements] / acceptance <= alpha
(evidence.nulls.accusation_p_values; v readable triggers, equal weights). Per n it prints:
- `need`: the agreements (of v) a user must reach with acceptance 1, and with the median acceptance
  of a registry of U IDs drawn as keys draw them (min distance `--min-distance`; a crowded code leaves
  later IDs a small draw region, which the bound pays for);
- the chance that at least one colluder is accused when 2 colluders vote (a coin where they disagree)
  or 3 colluders take a majority vote, exact for independent uniform IDs (a colluder then agrees on
  3/4 of the triggers on average), and by Monte Carlo over `--trials` registries drawn at the min
  distance, colluders picked at random, where innocent accusations are counted too.
Writes benchmarks/results/collusion_tracing.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from fingermarks.codes import draw_ids
from fingermarks.evidence.nulls import accusation_p_values

RESULTS = Path(__file__).resolve().parent / "results"


def needed_agreement(v: int, users: int, alpha: float, acceptance: float = 1.0) -> int | None:
    """Smallest agreement k of v readable triggers with users * P[Bin(v, 1/2) >= k] / acceptance <= alpha (None: none)."""
    k = np.arange(v + 1)
    ok = users * stats.binom.sf(k - 1, v, 0.5) / acceptance <= alpha
    return int(k[ok][0]) if ok.any() else None


def p_accuse_vote2(v: int, need: int | None) -> float:
    """P[a colluder of 2 reaches `need`]: they disagree on D ~ Bin(v, 1/2) triggers and a coin splits those."""
    if need is None:
        return 0.0
    total = 0.0
    for d in range(v + 1):
        x = np.arange(d + 1)  # disagreements won by colluder A
        best = (v - d) + np.maximum(x, d - x)
        total += stats.binom.pmf(d, v, 0.5) * stats.binom.pmf(x, d, 0.5)[best >= need].sum()
    return float(total)


def p_accuse_vote3(v: int, need: int | None) -> float:
    """P[a colluder of 3 reaches `need`]: per trigger all agree (1/4) or one of them is the minority
    (1/4 each); colluder c agrees on v - N_c, so one is accused when min N_c <= v - need."""
    if need is None:
        return 0.0
    a = np.arange(v + 1)
    n1, n2, n3 = np.meshgrid(a, a, a, indexing="ij")
    n0 = v - n1 - n2 - n3
    ok = (n0 >= 0) & (np.minimum(np.minimum(n1, n2), n3) <= v - need)
    logp = (stats.multinomial.logpmf(np.stack([n0, n1, n2, n3], -1)[ok], v, [0.25] * 4))
    return float(np.exp(logp).sum())


def monte_carlo(n: int, users: int, alpha: float, min_distance: int, readable: float, trials: int, seed: int = 0) -> dict:
    """Registries drawn as keys draw them; 2 and 3 random colluders vote (ties by a coin), a share
    `readable` of triggers stays readable; how often a colluder, and how often an innocent, is accused."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    reserved = torch.stack([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
    hits = {2: [0, 0], 3: [0, 0]}
    acceptance_all = []
    for _ in range(trials):
        ids, acceptance = draw_ids(users, n, min_distance, g, reserved=reserved, return_acceptance=True)
        ids = ids.numpy()
        acceptance_all += acceptance
        for k in (2, 3):
            colluders = rng.choice(users, k, replace=False)
            ones = ids[colluders].sum(0)
            bits = np.where(2 * ones > k, 1, np.where(2 * ones < k, 0, rng.integers(0, 2, n)))
            read = rng.random(n) < readable
            agree = ((ids == bits) & read).sum(1)
            v = int(read.sum())
            p = accusation_p_values((2 * agree - v).tolist(), v, 0, acceptance)
            named = p <= alpha
            guilty = np.zeros(users, dtype=bool)
            guilty[colluders] = True
            hits[k][0] += bool((named & guilty).any())
            hits[k][1] += bool((named & ~guilty).any())
    return {"median_acceptance": float(np.median(acceptance_all)), "mc_trials": trials,
            **{f"mc_colluder_{k}": hits[k][0] / trials for k in (2, 3)},
            **{f"mc_innocent_{k}": hits[k][1] for k in (2, 3)}}  # counts: the bound allows alpha per trial


def table(ns, users: int, alpha: float, readable: float, min_distance: int, trials: int) -> list[dict]:
    rows = []
    for n in ns:
        v = int(round(readable * n))
        mc = monte_carlo(n, users, alpha, min_distance, readable, trials) if trials else {"median_acceptance": 1.0}
        need = needed_agreement(v, users, alpha)
        need_reg = needed_agreement(v, users, alpha, mc["median_acceptance"])
        rows.append({"n": n, "readable": v, "need": need, "need_share": None if need is None else need / v,
                     "need_registry": need_reg, "expected_agreement": 0.75 * v,
                     "vote2": p_accuse_vote2(v, need), "vote3": p_accuse_vote3(v, need),
                     "vote2_registry": p_accuse_vote2(v, need_reg), "vote3_registry": p_accuse_vote3(v, need_reg), **mc})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--readable", type=float, default=1.0)
    ap.add_argument("--min-distance", type=int, default=12)
    ap.add_argument("--n", type=int, nargs="+", default=[30, 40, 48, 64, 80, 96, 128])
    ap.add_argument("--trials", type=int, default=300)
    args = ap.parse_args()
    rows = table(args.n, args.users, args.alpha, args.readable, args.min_distance, args.trials)
    print(f"U={args.users} users, trace_alpha={args.alpha:g}, readable share {args.readable:g}, IDs at min distance "
          f"{args.min_distance}; P = chance a colluder is accused (exact, uniform IDs; MC: drawn registries)")
    print("   n  need(a=1)  share  median a  need(reg)  E[agree]  P2 vote  P3 vote  P2 reg  P3 reg  MC P2  MC P3  "
          "MC trials with an innocent accused")
    for r in rows:
        fmt = lambda x: "-" if x is None else f"{x}"  # noqa: E731
        print(f"{r['n']:4d}  {fmt(r['need']):>9}  {r['need_share'] or float('nan'):5.2f}  {r['median_acceptance']:8.4f}  "
              f"{fmt(r['need_registry']):>9}  {r['expected_agreement']:8.1f}  {r['vote2']:7.3f}  {r['vote3']:7.3f}  "
              f"{r['vote2_registry']:6.3f}  {r['vote3_registry']:6.3f}  {r.get('mc_colluder_2', float('nan')):5.2f}  "
              f"{r.get('mc_colluder_3', float('nan')):5.2f}  {r.get('mc_innocent_2', 0) + r.get('mc_innocent_3', 0)} of "
              f"{2 * r.get('mc_trials', 0)}")
    trials = sum(2 * r.get("mc_trials", 0) for r in rows)
    innocent = sum(r.get("mc_innocent_2", 0) + r.get("mc_innocent_3", 0) for r in rows)
    print(f"innocent accusations over all {trials} Monte Carlo trials: {innocent} (the bound: at most alpha per trial, "
          f"{trials * args.alpha:.2f} expected)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"collusion_tracing{'' if args.readable == 1 else f'_readable{args.readable:g}'}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
