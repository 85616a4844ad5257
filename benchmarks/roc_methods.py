"""Separation of derived and independent models, every method on the same populations, several seeds.

    python benchmarks/roc_methods.py [--seeds 0 1 2] [--methods fingermarks fingermarks_paper mbw ipguard]
        [--attacks ftal rtal ...] [hydra overrides ...]

Per seed and method: the host (cached, shared by every method), the method's key (passphrase
`roc-<seed>`), its users' models (3 embedded, so collusion of 2 and 3 can run; none for IPGuard), and
every attack of `--attacks` along its whole strength axis: these are the derived models. The
independent models are the held-out population (conf/population/heldout.yaml, 20 models, 5 families,
never used to calibrate or tune). The score is -log10(p) of each method's own verdict; the ROC is
computed per seed over the attacked models that keep at least `--min-acc` clean accuracy (a removal
that ruins the model is no success for the thief), and reported as mean and spread over seeds.
Writes benchmarks/results/roc_methods.json (every row) and roc_methods.png (seed 0's curves).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from compose import ROOT, compose_config
from fingermarks.attacks.base import choose_victims, make_attack
from fingermarks.evaluation.robustness import robustness_curve
from fingermarks.evaluation.roc import plot_rocs, roc_by_method
from fingermarks.evaluation.uniqueness import uniqueness
from fingermarks.evidence.nulls import clopper_pearson
from fingermarks.files import save_json
from fingermarks.pipeline import distribute, make_context, obtain_host, obtain_key, public_decision, user_names

RESULTS = ROOT / "benchmarks" / "results"
KEEP = ("method", "attack", "strength", "default", "clean_acc", "p_value", "owned", "traced_correctly", "innocent_accused",
        "traced_user", "bit_acc", "match_rate")


def one(seed: int, method_name: str, attacks: list[str], overrides: list[str]) -> tuple[list[dict], list[dict], dict]:
    out = Path(tempfile.mkdtemp(prefix=f"roc-{method_name}-{seed}-"))
    users = 0 if method_name == "ipguard" else 3
    base = ["trainer.enable_progress_bar=false", f"seed={seed}", f"method={method_name}", f"key_secret=roc-{seed}",
            f"users={users}", "experiment=uniqueness_heldout", f"cache_dir={ROOT / '.cache'}", *overrides]
    cfg = compose_config(base, out)
    ctx = make_context(cfg, out)
    method = instantiate(cfg.method)
    host, host_info = obtain_host(cfg, ctx)
    key = obtain_key(cfg, method, host, ctx, user_names(cfg.users))
    infos, models = distribute(cfg, method, host, key, list(key.users), ctx) if method.embeds else ({}, {})
    derived = []
    for name in attacks:
        attack = make_attack(compose_config(base + [f"attack={name}"], out).attack)
        data = attack.attacker_data(ctx.datamodule, key.report.get("source_indices", []), seed=seed)
        if method.embeds:
            victims = choose_victims(list(key.users), None, attack.victims)
            rows = robustness_curve(attack, [models[u] for u in victims], key, victims, ctx, data, host=host)
        else:
            rows = robustness_curve(attack, [host] * attack.victims, key, [None] * attack.victims, ctx, data, host=host)
        derived += [{k: r.get(k) for k in KEEP} | {"seed": seed, "method": method_name} for r in rows]
    unique = uniqueness(key, ctx, cfg.uniqueness, seed)
    independent = [{"method": method_name, "seed": seed} | {k: r[k] for k in ("model", "arch", "p_value", "owned", "match_rate", "pair_match_rate")}
                   for r in unique["rows"]]
    info = {"keygen_seconds": key.report.get("keygen_seconds"), "host_clean_acc": host_info["clean_acc"],
            "acc_drop": {u: 100 * (host_info["clean_acc"] - i["clean_acc"]) for u, i in infos.items()},
            "decision": public_decision({k: v for k, v in key.decision.items() if k != "how"})}  # no key material
    return derived, independent, info


def relabel(partial: dict, first_attack: str) -> tuple[list[dict], list[dict]]:
    """Rows of a result file written before rows carried the preset's name (fingermarks and
    fingermarks_paper share the method field): blocks follow `info`'s (method/seed) order, a derived
    block starts at the first attack's first row, an independent block is one population."""
    blocks = list(partial["info"])
    derived, b = [], -1
    for k, row in enumerate(partial["derived"]):
        if row["attack"] == first_attack and (k == 0 or partial["derived"][k - 1]["attack"] != first_attack):
            b += 1
        derived.append(row | {"method": blocks[b].split("/")[0]})
    size = len(partial["independent"]) // len(blocks)
    independent = [row | {"method": blocks[k // size].split("/")[0]} for k, row in enumerate(partial["independent"])]
    return derived, independent


def summarise(derived: list[dict], independent: list[dict], infos: dict, seeds: list[int], min_acc: float, args, overrides) -> None:
    # strength 0 of every attack is the user's model itself: count it once (the first attack's)
    derived = [r for r in derived if float(r["strength"]) != 0 or r["attack"] == args.attacks[0]]
    per_seed = {s: roc_by_method([r for r in derived if r["seed"] == s], [r for r in independent if r["seed"] == s], min_acc)
                for s in seeds}
    methods = sorted({m for rocs in per_seed.values() for m in rocs})
    table = {}
    for m in methods:
        aucs = [per_seed[s][m]["auc"] for s in seeds if m in per_seed[s]]
        tprs = [per_seed[s][m]["tpr_at_fpr"] for s in seeds if m in per_seed[s]]
        owned = sum(r["owned"] for r in independent if r["method"] == m)
        total = sum(r["method"] == m for r in independent)
        innocent = sum(bool(r.get("innocent_accused")) for r in derived if r["method"] == m)
        usable = [r for r in derived if r["method"] == m and r["clean_acc"] >= min_acc]
        table[m] = {"auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)), "tpr_at_fpr_1pct_mean": float(np.mean(tprs)),
                    "tpr_at_fpr_1pct_std": float(np.std(tprs)), "seeds": len(aucs), "independent_owned": owned,
                    "independent_models": total, "independent_owned_ci95": clopper_pearson(owned, total),
                    "innocent_accusations": innocent, "derived_usable": len(usable),
                    "derived_owned": sum(bool(r["owned"]) for r in usable),
                    # a method without users (IPGuard) traces nobody: None, not a count
                    "derived_traced": sum(bool(r.get("traced_correctly")) for r in usable)
                    if any(r.get("traced_user") for r in usable) else None}
    save_json({"args": vars(args), "overrides": overrides, "table": table, "info": infos, "derived": derived,
               "independent": independent, "roc_per_seed": {str(s): {m: {k: v for k, v in r.items() if k not in ("fpr", "tpr")}
                                                                     for m, r in rocs.items()} for s, rocs in per_seed.items()}},
              RESULTS / f"{args.out}.json")
    plot_rocs(per_seed[seeds[0]], RESULTS / f"{args.out}.png", title=f"mnist5k seed {seeds[0]}: attacked (acc >= {min_acc}) vs held-out")
    lines = ["| method | AUC | TPR at FPR <= 1 % | attacked models owned (traced) | independent owned (95 % CI) | innocent users named |",
             "|---|---|---|---|---|---|"]
    for m, t in table.items():
        ci = t["independent_owned_ci95"]
        lines.append(f"| {m} | {t['auc_mean']:.3f} +- {t['auc_std']:.3f} | {t['tpr_at_fpr_1pct_mean']:.2f} +- {t['tpr_at_fpr_1pct_std']:.2f} | "
                     f"{t['derived_owned']} ({'-' if t['derived_traced'] is None else t['derived_traced']}) of {t['derived_usable']} | {t['independent_owned']} of "
                     f"{t['independent_models']} ({ci[0]:.3f}-{ci[1]:.3f}) | {t['innocent_accusations']} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["fingermarks", "fingermarks_paper", "mbw", "ipguard"])
    parser.add_argument("--attacks", nargs="+", default=["ftal", "rtal", "ftal_adam", "prune", "input_noise", "onnx_int8",
                                                          "adv_train", "collude_average", "collude_vote"])
    parser.add_argument("--min-acc", type=float, default=0.9)
    parser.add_argument("--out", default="roc_methods")
    parser.add_argument("--analyse", nargs="+", metavar="JSON[@old=new]",
                        help="summarise earlier (partial) result files instead of running; @old=new renames a method in that file")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if args.analyse:
        derived, independent, infos = [], [], {}
        for spec in args.analyse:  # FILE or FILE@old=new: rows of method `old` in that file are named `new`
            path, _, rename = spec.partition("@")
            partial = json.loads(Path(path).read_text())
            d, i = relabel(partial, args.attacks[0])
            if rename:
                old, new = rename.split("=")
                d, i = ([r | {"method": new if r["method"] == old else r["method"]} for r in rows] for rows in (d, i))
                partial["info"] = {k.replace(f"{old}/", f"{new}/") if k.startswith(f"{old}/") else k: v for k, v in partial["info"].items()}
            derived, independent, infos = derived + d, independent + i, infos | partial["info"]
        summarise(derived, independent, infos, sorted({r["seed"] for r in derived}), args.min_acc, args, overrides)
        return
    derived, independent, infos = [], [], {}
    for seed in args.seeds:
        for name in args.methods:
            d, i, info = one(seed, name, args.attacks, overrides)
            derived += d
            independent += i
            infos[f"{name}/{seed}"] = info
            save_json({"derived": derived, "independent": independent, "info": infos}, RESULTS / f"{args.out}.partial.json")
    summarise(derived, independent, infos, args.seeds, args.min_acc, args, overrides)


if __name__ == "__main__":
    main()
