"""Does a user's ID survive adversarial training as a *shift* of the trigger's boundary? (exploratory)

    python benchmarks/probe_adv_boundary.py [--seed 0] [--eps 0.1] [hydra overrides ...]

FGSM adversarial training sends most triggers back to their source label i, whatever the user's bit
(README, tracing channel). This probe asks whether the bit is still visible further along the trigger's
perturbation: for each trigger t with source image s, the suspect is queried at s + a * (t - s) for a on
a grid (a = 1 is the trigger itself), and the first a at which it answers j is that trigger's crossing
point. A user who carries j at t was trained to answer j there, one who carries i to answer i, so after
the attack the j-carrier may still cross earlier. Leave-one-out over the embedded users: per trigger,
a threshold between the other users' crossing points (j-carriers vs i-carriers) reads the left-out
user's bit; the agreement with that user's ID is the evidence (a fair coin per read trigger for a
model made without the key, as the code rule's null). Writes benchmarks/results/probe_adv_boundary.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from scipy import stats

from compose import ROOT, compose_config
from fingermarks.attacks.base import make_attack
from fingermarks.files import save_json
from fingermarks.pipeline import distribute, make_context, obtain_host, obtain_key, user_names

GRID = [1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0]


def crossing(model: torch.nn.Module, src: torch.Tensor, trig: torch.Tensor, j: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """Per trigger, the index in GRID of the first a where the model answers j (len(GRID) if never)."""
    out = np.full(len(trig), len(GRID))
    model.eval()
    with torch.no_grad():
        for k, a in reversed(list(enumerate(GRID))):
            x = (src + a * (trig - src)).clamp(lo, hi)
            hit = (model(x).argmax(1) == j).numpy()
            out[hit] = k
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--embed", type=int, default=4)
    args, overrides = parser.parse_known_args()
    seed = args.seed
    out = Path(tempfile.mkdtemp(prefix=f"probe-adv-{seed}-"))
    base = ["trainer.enable_progress_bar=false", f"seed={seed}", f"key_secret=channel-{seed}", "users=100",
            f"cache_dir={ROOT / '.cache'}", *[o for o in overrides if o != "--"]]
    cfg = compose_config(base, out)
    ctx = make_context(cfg, out)
    method = instantiate(cfg.method)
    host, _ = obtain_host(cfg, ctx)
    key = obtain_key(cfg, method, host, ctx, user_names(cfg.users))
    embedded = list(key.users)[: args.embed]
    _, models = distribute(cfg, method, host, key, embedded, ctx)
    src, _ = ctx.datamodule.train_eval_set.tensors(torch.tensor(key.report["source_indices"]))
    lo, hi = ctx.datamodule.input_range
    trig, j = key.triggers, key.pairs[:, 1]
    acfg = compose_config(base + ["attack=adv_train", f"attack.strengths=[{args.eps}]", f"attack.default={args.eps}"], out)
    carries_j = {u: (key.target_labels(key.users[u]) == j).numpy() for u in embedded}
    cross = {"clean": {}, "attacked": {}}
    for u in embedded:
        attack = make_attack(acfg.attack)
        data = attack.attacker_data(ctx.datamodule, key.report.get("source_indices", []), seed=seed)
        _, suspect = next(iter(attack.run(models[u], data, ctx)))
        cross["clean"][u] = crossing(models[u], src, trig, j, lo, hi)
        cross["attacked"][u] = crossing(suspect.model, src, trig, j, lo, hi)
    result = {"seed": seed, "eps": args.eps, "grid": GRID, "users": {}}
    for u in embedded:
        others = [v for v in embedded if v != u]
        reads, agree = 0, 0
        for t in range(len(trig)):
            cj = [cross["attacked"][v][t] for v in others if carries_j[v][t]]
            ci = [cross["attacked"][v][t] for v in others if not carries_j[v][t]]
            if not cj or not ci or np.mean(cj) >= np.mean(ci):
                continue  # no calibration for this trigger, or j-carriers do not cross earlier
            thr = (np.mean(cj) + np.mean(ci)) / 2
            reads += 1
            agree += int((cross["attacked"][u][t] < thr) == carries_j[u][t])
        cu = cross["attacked"][u]
        result["users"][u] = {
            "reads": reads, "agree": agree,
            "p_one_id": float(stats.binom.sf(agree - 1, reads, 0.5)) if reads else 1.0,
            "mean_crossing_j_carriers": float(np.mean([GRID[min(c, len(GRID) - 1)] for c in cu[carries_j[u]]])),
            "mean_crossing_i_carriers": float(np.mean([GRID[min(c, len(GRID) - 1)] for c in cu[~carries_j[u]]])),
            "never_cross_j": int((cu[carries_j[u]] == len(GRID)).sum()), "never_cross_i": int((cu[~carries_j[u]] == len(GRID)).sum()),
            "auc_crossing": float(stats.mannwhitneyu(cu[~carries_j[u]], cu[carries_j[u]]).statistic
                                  / (carries_j[u].sum() * (~carries_j[u]).sum())),
        }
        print(u, result["users"][u])
    save_json(result, ROOT / "benchmarks" / "results" / f"probe_adv_boundary_seed{seed}.json")


if __name__ == "__main__":
    main()
