"""Does an extracted student carry any trace of the victim? Thief's students against control students.

    python benchmarks/extraction_control.py [--seeds 0 1 2] [--tag NAME] [--reuse] [hydra overrides ...]

The UAP benchmark (uap_fingerprint.py) separates the thief's students from independent models trained
on the whole training set with true labels. Those differ from a student in more than provenance (data
size, training length), so a score can separate them without seeing the victim at all. The honest
null for "did this student learn from our model?" is a *control student*: the same architecture, the
same images drawn from the attacker split, the same initialisation and batch order (the same seed),
trained on the thief's own true labels instead of the victim's answers (`labels: truth` in
evidence/piracy.py). Per seed (host and UAP key as in uap_fingerprint.py, secret `bench-uap-<seed>`):
- victim-label students: 4 architectures x budgets 500, 1,000, 3,000 x hard / soft labels, and the
  fine-tuned and pruned copies (uap_fingerprint.py's held-out piracy population, seeds 70000+);
- one control per (architecture, budget), paired by seed with the hard-label student;
- scores: the UAP verdict's -log10 p in the outputs and label-only modes, and three probes that need no
  key: agreement with the victim's labels on the images the victim gets wrong (owner and test images),
  on the victim's own L2 PGD adversarial examples (radius 2), and the correlation of log-probabilities
  with the victim's on clean owner images.
Writes benchmarks/results/extraction_control[_<tag>].json: per score, AUC of hard / soft students and
of the copies against the controls, and how often a student scores above its own control.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from compose import ROOT, seed_results
from fingermarks.evaluation.roc import evidence_score
from fingermarks.evidence.piracy import attacker_pool, expand, owner_pool, piracy_population
from fingermarks.files import save_json
from fingermarks.methods.uap import LOG_FLOOR
from fingermarks.metrics import predict_labels, predict_probabilities
from fingermarks.secret import KeySecret
from uap_fingerprint import COPIES, EVAL_SEED, MIN_ACC, STUDENTS, uap_run, verify_both

PGD_RADIUS = 2.0
PGD_STEPS = 20
PGD_IMAGES = 1000


def log_probabilities(model, x: torch.Tensor) -> torch.Tensor:
    """(N, m) log-probabilities, clipped at log 1e-6 (as the UAP outputs mode reads them)."""
    return predict_probabilities(model, x).clamp_min(LOG_FLOOR).log()


def pgd_l2(model, x: torch.Tensor, radius: float, steps: int) -> torch.Tensor:
    """Untargeted L2 PGD on the victim's own labels (inputs clipped to [0, 1])."""
    y = predict_labels(model, x)
    d = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        g, = torch.autograd.grad(F.cross_entropy(model((x + d).clamp(0, 1)), y), d)
        d = d + 2.5 * radius / steps * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        d = (d * (radius / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)).detach().requires_grad_(True)
    return (x + d).clamp(0, 1).detach()


def probes(host, dm) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Key-free query sets and the victim's answers on them (labels, or log-probabilities)."""
    for p in host.parameters():
        p.requires_grad_(False)
    xo, yo = dm.train_eval_set.tensors(owner_pool(dm))
    xt, yt = dm.test_set.tensors()
    x_all, y_all = torch.cat([xo, xt]), torch.cat([yo, yt])
    v_all = predict_labels(host, x_all)
    wrong = v_all != y_all
    x_adv = pgd_l2(host, xo[:PGD_IMAGES], PGD_RADIUS, PGD_STEPS)
    v_adv = predict_labels(host, x_adv)
    fooled = v_adv != v_all[:PGD_IMAGES]
    return {"victim_errors": (x_all[wrong], v_all[wrong]), "victim_pgd": (x_adv[fooled], v_adv[fooled]),
            "logprob_corr": (xo, log_probabilities(host, xo))}


def probe_scores(model, sets) -> dict[str, float]:
    out = {}
    for name, (x, ref) in sets.items():
        if name == "logprob_corr":
            a, b = log_probabilities(model, x), ref
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            out[name] = float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())
        else:
            out[name] = float((predict_labels(model, x) == ref).float().mean())
    return out


def one_seed(seed: int, overrides: list[str]) -> dict:
    cfg, ctx, host, host_info, _ = uap_run(seed, overrides, "control")
    dm = ctx.datamodule
    t = time.perf_counter()
    key = instantiate(cfg.method).keygen(host, ctx, [], seed, secret=KeySecret.from_text(f"bench-uap-{seed}"))
    keygen_seconds = time.perf_counter() - t
    x, y, source = attacker_pool(dm)
    specs = expand({"students": STUDENTS, "copies": COPIES})
    piracy = piracy_population(host, specs, dm, x, y, EVAL_SEED, seed, ctx.cache_dir, role="eval_piracy")
    # each hard-label student's control: its spec with the thief's own labels, under the student's seed
    paired = [dict(s, labels="truth", seed=EVAL_SEED + 100 * seed + r) for r, s in enumerate(specs)
              if s["kind"] == "distill" and s["labels"] == "hard"]
    t = time.perf_counter()
    controls = piracy_population(host, paired, dm, x, y, EVAL_SEED, seed, ctx.cache_dir, role="control")
    control_seconds = time.perf_counter() - t
    sets = probes(host, dm)
    rows = []
    for kind, models in (("student", piracy), ("control", controls)):
        for model, info in models:
            name = info["name"]
            group = "control" if kind == "control" else ("hard" if name.endswith(":hard") else "soft" if name.endswith(":soft") else "copy")
            v = verify_both(key, model, name)
            rows.append({"group": group, "name": name, "clean_acc": info["clean_acc"], "seed": info.get("seed"),
                         "uap_outputs": evidence_score(v["outputs"]["p_value"]), "uap_labels": evidence_score(v["labels"]["p_value"]),
                         "uap_outputs_owned": v["outputs"]["owned"], "uap_labels_owned": v["labels"]["owned"],
                         **probe_scores(model, sets)})
    result = {"seed": seed, "host_clean_acc": host_info["clean_acc"], "attacker_data": source, "keygen_seconds": keygen_seconds,
              "control_seconds": control_seconds, "probe_sizes": {k: len(v[0]) for k, v in sets.items()}, "rows": rows,
              "separation": separation(rows)}
    for score, sep in result["separation"].items():
        print(f"seed {seed} {score:14s} " + "  ".join(f"{g}: AUC {s['auc']:.3f} above own control {s.get('above_control', '-')}"
                                                    for g, s in sep.items()), flush=True)
    return result


def victim_answers_summary(seed: int, overrides: list[str]) -> dict:
    """How much a student can learn from the victim beyond the labels: its accuracy on the thief's
    images and how confident its answers are there (the victim's host is cached)."""
    _, ctx, host, info, _ = uap_run(seed, overrides, "control-victim")
    x, y, _ = attacker_pool(ctx.datamodule)
    p = predict_probabilities(host, x)
    top = p.max(1).values
    return {"seed": seed, "test_acc": info["clean_acc"], "attacker_images": len(x),
            "agrees_with_true_label": float((p.argmax(1) == y).float().mean()),
            "top_prob_above_0.99": float((top > 0.99).float().mean()), "mean_mass_off_top": float((1 - top).mean())}


SCORES = ("uap_outputs", "uap_labels", "victim_errors", "victim_pgd", "logprob_corr")


def separation(rows: list[dict]) -> dict:
    """Per score: AUC of each group of victim-derived models (clean accuracy >= MIN_ACC) against the
    controls, and for students how many score above the control that shares their seed, images and
    architecture (ties count half)."""
    control = [r for r in rows if r["group"] == "control"]
    by_seed = {r["seed"]: r for r in control}
    out = {}
    for score in SCORES:
        c = [r[score] for r in control]
        out[score] = {}
        for group in ("hard", "soft", "copy"):
            g = [r for r in rows if r["group"] == group and r["clean_acc"] >= MIN_ACC]
            s = [r[score] for r in g]
            entry = {"auc": float(roc_auc_score([1] * len(s) + [0] * len(c), s + c)), "n": len(s), "controls": len(c),
                     "mean": float(np.mean(s)), "control_mean": float(np.mean(c))}
            if group == "hard":  # paired: the control shares the student's seed
                pairs = [(r[score], by_seed[r["seed"]][score]) for r in g if r["seed"] in by_seed]
                entry["above_control"] = f"{sum((a > b) + 0.5 * (a == b) for a, b in pairs):g}/{len(pairs)}"
            out[score][group] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tag", default="")
    parser.add_argument("--reuse", action="store_true",
                        help="take a seed's result from its per-seed file (results/extraction_control[_tag]_seed<k>.json) when present")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(1)
    name = "extraction_control" + (f"_{args.tag}" if args.tag else "")
    results = seed_results(name, args.seeds, lambda s: one_seed(s, overrides), {"overrides": overrides}, args.reuse)
    pooled = separation([dict(r, seed=(res["seed"], r["seed"])) for res in results for r in res["rows"]])
    aggregate = {score: {group: {"auc_mean": float(np.mean([res["separation"][score][group]["auc"] for res in results])),
                                 "auc_sd": float(np.std([res["separation"][score][group]["auc"] for res in results], ddof=1))
                                 if len(results) > 1 else 0.0, "pooled_auc": pooled[score][group]["auc"],
                                 **({"above_control": pooled[score][group]["above_control"]} if group == "hard" else {})}
                         for group in ("hard", "soft", "copy")} for score in SCORES}
    victim = [victim_answers_summary(s, overrides) for s in args.seeds]
    for v in victim:
        print(f"victim of seed {v['seed']} on the thief's {v['attacker_images']} images: true label {v['agrees_with_true_label']:.3f}, "
              f"top probability > 0.99 on {v['top_prob_above_0.99']:.3f}, mean mass off the top {v['mean_mass_off_top']:.4f}")
    path = save_json({"seeds": args.seeds, "overrides": overrides, "min_acc": MIN_ACC, "students": STUDENTS, "copies": COPIES,
                      "victim": victim,
                      "pgd": {"radius": PGD_RADIUS, "steps": PGD_STEPS, "images": PGD_IMAGES}, "aggregate": aggregate,
                      "per_seed": results}, ROOT / "benchmarks" / "results" / f"{name}.json")
    print(path)
    for score, groups in aggregate.items():
        print(f"{score:14s} " + "  ".join(f"{g}: AUC {v['auc_mean']:.3f} +- {v['auc_sd']:.3f}" + (f" above control {v['above_control']}" if "above_control" in v else "")
                                        for g, v in groups.items()))


if __name__ == "__main__":
    main()
