"""UAP fingerprinting on mnist5k: held-out piracy copies against held-out independent models, per seed.

    python benchmarks/uap_fingerprint.py [--seeds 0 1 2] [--heldout-seed 0] [--tag NAME] [--reuse] [hydra overrides ...]

Per seed: the host (small CNN, `seed`), the UAP key (`method=uap`, secret `bench-uap-<seed>`: UAPs,
points, the owner's encoder population of seeds 50000+/60000+, the null pool of seeds 20000+), then
- held-out piracy copies made from the *attacker split* (never the owner's data), seeds 70000+:
  students of 4 architectures (small CNN, wider BNCNN, ResNet-18 w16, MLP) x query budgets 500,
  1,000, 3,000 x hard/soft labels, and fine-tuned (FTAL, RTAL) and pruned copies of the host;
- held-out independent models: conf/population/heldout.yaml (20 models, 5 families, seeds 40000+).
Each suspect is verified in the outputs mode (probabilities) and the label-only mode (top-1 labels).
Writes benchmarks/results/uap[_<tag>].json (per seed and aggregated: AUC and TPR at FPR <= 1 % of
-log10(p), how many held-out independent models were called copies, costs) and uap_roc[_<tag>].png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
import tempfile

import numpy as np
import torch
from hydra.utils import instantiate

from compose import ROOT, compose_config, seed_results
from fingermarks.evaluation.roc import evidence_score, plot_rocs, separation
from fingermarks.evidence.piracy import attacker_pool, piracy_population
from fingermarks.evidence.pool import train_population
from fingermarks.files import save_json
from fingermarks.pipeline import make_context
from fingermarks.secret import KeySecret
from fingermarks.suspects import ModuleSuspect
from fingermarks.verification import verify_labels, verify_suspect

EVAL_SEED = 70_000
STUDENTS = {
    "archs": [
        {"_target_": "fingermarks.models.SmallCNN", "width": 32},
        {"_target_": "fingermarks.models.BNCNN", "width": 48, "depth": 3},
        {"_target_": "fingermarks.models.ResNet18", "width": 16},
        {"_target_": "fingermarks.models.MLP", "hidden": [512, 256]},
    ],
    "budgets": [500, 1000, 3000],
    "labels": ["hard", "soft"],
    "steps": 300,
}
COPIES = [
    {"kind": "finetune", "epochs": 5, "lr": 1e-3},
    {"kind": "finetune", "epochs": 5, "lr": 1e-4},
    {"kind": "finetune", "epochs": 5, "lr": 1e-3, "reinit_last": True},
    {"kind": "prune", "rate": 0.5},
    {"kind": "prune", "rate": 0.7},
    {"kind": "prune", "rate": 0.9},
]
#: an attacked copy counts as piracy when the thief would still use it (DESIGN: "keeps its accuracy")
MIN_ACC = 0.9


def verify_both(key, model, name: str) -> dict:
    suspect = ModuleSuspect(model, name)
    t = time.perf_counter()
    out = verify_suspect(key, suspect)  # outputs mode: ModuleSuspect gives logits
    t_out = time.perf_counter() - t
    t = time.perf_counter()
    lab = verify_labels(key, suspect.labels(key.triggers))
    t_lab = time.perf_counter() - t
    assert out.evidence["mode"] == "outputs" and lab.evidence["mode"] == "labels"
    return {"outputs": {"score": out.match_rate, "p_value": out.p_value, "owned": out.owned, "p_pool": out.evidence["p_pool"],
                        "seconds": t_out},
            "labels": {"score": lab.match_rate, "p_value": lab.p_value, "owned": lab.owned, "p_pool": lab.evidence["p_pool"],
                       "seconds": t_lab, "label_agreement": lab.evidence["label_agreement"]},
            "n_queries": out.n_queries}


def uap_run(seed: int, overrides: list[str], prefix: str = "uap"):
    """A seed's config (method=uap, one population for every seed), run context, host (cached after its
    first training), the host's report and the seconds it took to train or load."""
    out = Path(tempfile.mkdtemp(prefix=f"{prefix}-{seed}-"))
    cfg = compose_config(["method=uap", "trainer.enable_progress_bar=false", f"seed={seed}", f"cache_dir={ROOT / '.cache'}",
                          "method.population_seed=0", *overrides], out)
    ctx = make_context(cfg, out)
    t = time.perf_counter()
    host, host_info = ctx.train_classifier(cfg.model, seed, "host")
    return cfg, ctx, host, host_info, time.perf_counter() - t


def one_seed(seed: int, overrides: list[str], heldout_seed: int | None) -> dict:
    cfg, ctx, host, host_info, host_seconds = uap_run(seed, overrides)
    dm = ctx.datamodule
    method = instantiate(cfg.method)
    t = time.perf_counter()
    key = method.keygen(host, ctx, [], seed, secret=KeySecret.from_text(f"bench-uap-{seed}"))
    keygen_seconds = time.perf_counter() - t

    x, y, source = attacker_pool(dm)
    t = time.perf_counter()
    piracy = piracy_population(host, {"students": STUDENTS, "copies": COPIES}, dm, x, y, EVAL_SEED, seed, ctx.cache_dir,
                               role="eval_piracy")
    piracy_seconds = time.perf_counter() - t
    pop = cfg.population
    t = time.perf_counter()
    indep = train_population(ctx, pop.models, int(pop.seed_base), seed if heldout_seed is None else heldout_seed, "heldout")
    heldout_seconds = time.perf_counter() - t

    rows = [{"kind": "piracy", "name": i["name"], "clean_acc": i["clean_acc"], **verify_both(key, m, i["name"])}
            for m, i in piracy]
    rows += [{"kind": "independent", "name": f"{i.get('arch')}#{r}", "clean_acc": i["clean_acc"],
              **verify_both(key, m, f"heldout{r}")} for r, (m, i) in enumerate(indep)]
    rows.append({"kind": "host", "name": "host", "clean_acc": host_info["clean_acc"], **verify_both(key, host, "host")})

    result = {"seed": seed, "host_clean_acc": host_info["clean_acc"], "host_seconds": host_seconds,
              "attacker_data": source, "keygen_seconds": keygen_seconds, "key_report": {
                  k: key.report[k] for k in ("uaps", "uap_norm", "uap_xi", "host_acc_on_uap", "points", "queries", "layout",
                                             "owner_population", "encoders", "timing", "null_models")},
              "thresholds": {m: key.decision["modes"][m]["threshold"] for m in ("outputs", "labels")},
              "piracy_seconds": piracy_seconds, "heldout_seconds": heldout_seconds, "rows": rows}
    for mode in ("outputs", "labels"):
        derived = [evidence_score(r[mode]["p_value"]) for r in rows if r["kind"] == "piracy" and r["clean_acc"] >= MIN_ACC]
        indep_s = [evidence_score(r[mode]["p_value"]) for r in rows if r["kind"] == "independent"]
        roc = separation(derived, indep_s)
        result[mode] = {
            **roc,
            "piracy_owned": sum(r[mode]["owned"] for r in rows if r["kind"] == "piracy" and r["clean_acc"] >= MIN_ACC),
            "independent_owned": sum(r[mode]["owned"] for r in rows if r["kind"] == "independent"),
            "host_owned": rows[-1][mode]["owned"],
            "missed": [r["name"] for r in rows if r["kind"] == "piracy" and r["clean_acc"] >= MIN_ACC and not r[mode]["owned"]],
            "seconds_per_suspect": float(np.mean([r[mode]["seconds"] for r in rows])),
        }
        print(f"seed {seed} {mode}: AUC {roc['auc']:.3f} TPR@1% {roc['tpr_at_fpr']:.3f} piracy owned "
              f"{result[mode]['piracy_owned']}/{roc['derived']} independents owned {result[mode]['independent_owned']}/"
              f"{roc['independent']} missed {result[mode]['missed']}", flush=True)
    return result


def aggregate(results: list[dict]) -> dict:
    agg = {}
    for mode in ("outputs", "labels"):
        auc = [r[mode]["auc"] for r in results]
        tpr = [r[mode]["tpr_at_fpr"] for r in results]
        agg[mode] = {"auc_mean": float(np.mean(auc)), "auc_sd": float(np.std(auc, ddof=1)) if len(auc) > 1 else 0.0,
                     "auc_min": float(np.min(auc)), "tpr_mean": float(np.mean(tpr)),
                     "tpr_sd": float(np.std(tpr, ddof=1)) if len(tpr) > 1 else 0.0, "tpr_min": float(np.min(tpr)),
                     "independent_owned": int(sum(r[mode]["independent_owned"] for r in results)),
                     "independents": int(sum(r[mode]["independent"] for r in results)),
                     "piracy_owned": int(sum(r[mode]["piracy_owned"] for r in results)),
                     "piracy": int(sum(r[mode]["derived"] for r in results)),
                     "seconds_per_suspect": float(np.mean([r[mode]["seconds_per_suspect"] for r in results]))}
    agg["queries"] = results[0]["key_report"]["queries"]
    agg["keygen_seconds_mean"] = float(np.mean([r["keygen_seconds"] for r in results]))
    return agg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tag", default="")
    parser.add_argument("--heldout-seed", type=int, default=None,
                        help="one held-out population for every seed (models seed_base + 100*this + r)")
    parser.add_argument("--reuse", action="store_true",
                        help="take a seed's result from its per-seed file (results/uap[_tag]_seed<k>.json) when present")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(1)
    name = "uap" + (f"_{args.tag}" if args.tag else "")
    results = seed_results(name, args.seeds, lambda s: one_seed(s, overrides, args.heldout_seed),
                           {"overrides": overrides, "heldout_seed": args.heldout_seed}, args.reuse)
    summary = {"seeds": args.seeds, "overrides": overrides, "heldout_seed": args.heldout_seed, "min_acc": MIN_ACC,
               "eval_piracy": {"students": STUDENTS, "copies": COPIES}, "aggregate": aggregate(results), "per_seed": results}
    path = save_json(summary, ROOT / "benchmarks" / "results" / f"{name}.json")
    rocs = {}
    for mode in ("outputs", "labels"):
        pooled_d = [evidence_score(row[mode]["p_value"]) for r in results for row in r["rows"]
                    if row["kind"] == "piracy" and row["clean_acc"] >= MIN_ACC]
        pooled_i = [evidence_score(row[mode]["p_value"]) for r in results for row in r["rows"] if row["kind"] == "independent"]
        rocs[f"UAP {mode} ({len(args.seeds)} seeds pooled)"] = separation(pooled_d, pooled_i)
    plot_rocs(rocs, ROOT / "benchmarks" / "results" / f"{name}_roc.png", title="UAP fingerprint: piracy vs independent")
    print(path)
    print(summary["aggregate"])


if __name__ == "__main__":
    main()
