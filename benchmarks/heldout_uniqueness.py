"""Held-out uniqueness of the ownership verdict on mnist5k, over several seeds (issue: verdicts that hold up).

    python benchmarks/heldout_uniqueness.py [--seeds 0 1 2] [hydra overrides ...]

Per seed: the whole chain (host, key from the passphrase `bench-<seed>`, 4 users) and the held-out
population of conf/population/heldout.yaml (20 models, 5 families, two absent from the owner's
reference models and pool; never used to calibrate or to pick a setting). Every held-out model is
verified against the key; the result records how many were called ours with the exact 95 %
Clopper-Pearson interval of that rate, the smallest p-value, what the paper's pair rule would have
counted, and the ROC of -log10(p) between the users' models and the held-out models.
Writes benchmarks/results/heldout_uniqueness[_<overrides>].json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from compose import ROOT, compose_config
from fingermarks.evidence.nulls import clopper_pearson
from fingermarks.files import save_json
from fingermarks.pipeline import run


def score(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def one_seed(seed: int, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"heldout-{seed}-"))
    cfg = compose_config(["experiment=uniqueness_heldout", "trainer.enable_progress_bar=false", f"seed={seed}",
                          f"key_secret=bench-{seed}", f"cache_dir={ROOT / '.cache'}", *overrides], out)
    summary = run(cfg, out)
    users = {u: r for u, r in summary["verification"].items() if u != "host"}
    rows = summary["uniqueness"]["rows"]
    return {
        "seed": seed, "run_dir": str(out), "host_clean_acc": summary["host"]["clean_acc"],
        "users": {u: {k: r[k] for k in ("owned", "traced_user", "p_value", "bit_acc", "margin")} | {
            "acc_drop": summary["users"][u]["acc_drop"], "embed_seconds": summary["users"][u]["embed_seconds"]}
            for u, r in users.items()},
        "host": {k: summary["verification"]["host"][k] for k in ("owned", "p_value", "match_rate")},
        "heldout": rows,
        "heldout_owned": summary["uniqueness"]["owned"],
        "heldout_min_p": summary["uniqueness"]["min_p_value"],
        "derived_scores": [score(r["p_value"]) for r in users.values()],
        "independent_scores": [score(r["p_value"]) for r in rows],
    }


def roc(derived: list[float], independent: list[float]) -> dict:
    y = np.r_[np.ones(len(derived)), np.zeros(len(independent))]
    s = np.r_[derived, independent]
    fpr, tpr, _ = roc_curve(y, s)
    return {"auc": float(roc_auc_score(y, s)), "tpr_at_fpr_1pct": float(tpr[fpr <= 0.01].max())}


def family_table(seeds: list[dict]) -> str:
    """Markdown: per architecture family of the held-out population, over every seed."""
    rows = [r for s in seeds for r in s["heldout"]]
    lines = ["| family | models | owned (code rule) | agreement mean / max | smallest p | pair rule: i or j mean / max | "
             "answering i or j on half or more (the paper's 15 of 30) |", "|---|---|---|---|---|---|---|"]
    for arch in sorted({r["arch"] for r in rows}):
        fam = [r for r in rows if r["arch"] == arch]
        agree, pair = [r["match_rate"] for r in fam], [r["pair_match_rate"] for r in fam]
        lines.append(f"| {arch} | {len(fam)} | {sum(r['owned'] for r in fam)} | {np.mean(agree):.2f} / {max(agree):.2f} | "
                     f"{min(r['p_value'] for r in fam):.2g} | {np.mean(pair):.2f} / {max(pair):.2f} | "
                     f"{sum(p >= 0.5 for p in pair)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table-only", metavar="JSON", help="write the family table of an earlier result file")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if args.table_only:
        path = Path(args.table_only).with_suffix(".md")
        path.write_text(family_table(json.loads(Path(args.table_only).read_text())["seeds"]) + "\n")
        print(path.read_text())
        return
    seeds = [one_seed(s, overrides) for s in args.seeds]
    owned = sum(s["heldout_owned"] for s in seeds)
    total = sum(len(s["heldout"]) for s in seeds)
    rocs = [roc(s["derived_scores"], s["independent_scores"]) for s in seeds]
    result = {
        "overrides": overrides, "seeds": seeds,
        "heldout_models": total, "heldout_owned": owned, "false_positive_ci95": clopper_pearson(owned, total),
        "users_owned_and_traced": sum(u["owned"] and u["traced_user"] == name for s in seeds for name, u in s["users"].items()),
        "users": sum(len(s["users"]) for s in seeds),
        "pair_rule_match_max": [max(r["pair_match_rate"] for r in s["heldout"]) for s in seeds],
        "roc_per_seed": rocs,
        "auc_mean": float(np.mean([r["auc"] for r in rocs])), "auc_std": float(np.std([r["auc"] for r in rocs])),
        "tpr_at_fpr_1pct_mean": float(np.mean([r["tpr_at_fpr_1pct"] for r in rocs])),
        "tpr_at_fpr_1pct_std": float(np.std([r["tpr_at_fpr_1pct"] for r in rocs])),
    }
    suffix = "".join("_" + re.sub(r"[^A-Za-z0-9=.,-]+", "-", o) for o in overrides)
    path = save_json(result, ROOT / "benchmarks" / "results" / f"heldout_uniqueness{suffix}.json")
    path.with_suffix(".md").write_text(family_table(seeds) + "\n")
    print(f"held-out models owned: {owned} of {total} (95 % CI {result['false_positive_ci95'][0]:.3f}-"
          f"{result['false_positive_ci95'][1]:.3f}); users owned and traced {result['users_owned_and_traced']} of "
          f"{result['users']}; AUC {result['auc_mean']:.3f} +- {result['auc_std']:.3f}; written {path}")


if __name__ == "__main__":
    main()
