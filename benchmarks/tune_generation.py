"""Find FingerMarks generation settings by experiment: match rates of independent models per setting.

    python benchmarks/tune_generation.py "method.generation.conferrable=0" "method.generation.conferrable=1"

Each argument is one setting (space-separated Hydra overrides). Independent models are the
uniqueness population (never the owner's reference/null models); all models are cached.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from hydra.utils import instantiate

from compose import compose_config
from fingermarks.evaluation.uniqueness import independent_models
from fingermarks.pipeline import make_context, obtain_host, user_names
import torch

from fingermarks.metrics import predict_labels
from fingermarks.suspects import ModuleSuspect
from fingermarks.verification import verify_suspect


RESULTS = __import__("pathlib").Path(__file__).parent / "results" / "tune_generation.jsonl"


def main(settings: list[str]) -> None:
    out = tempfile.mkdtemp(prefix="tune-")
    base = ["trainer.enable_progress_bar=false", *os.environ.get("TUNE_BASE", "").split()]
    cfg = compose_config(base, out)
    ctx = make_context(cfg, __import__("pathlib").Path(out))
    host, host_info = obtain_host(cfg, ctx)
    population = [(n, a, m) for n, a, _, m, _ in independent_models(ctx, cfg.uniqueness.same_arch, list(cfg.uniqueness.other_archs), int(cfg.seed),
                                                                       int(cfg.uniqueness.seed_base))]
    print(json.dumps({k: round(v["clean_acc"], 4) for k, v in ctx.trained.items()}))
    for setting in settings or [""]:
        cfg = compose_config(base + setting.split(), out)
        method = instantiate(cfg.method)
        t = time.perf_counter()
        key = method.keygen(host, ctx, user_names(cfg.users), int(cfg.seed))
        seconds = time.perf_counter() - t
        rates = {n: verify_suspect(key, ModuleSuspect(m, n)).match_rate for n, a, m in population}
        labels = torch.stack([predict_labels(m, key.triggers) for _, _, m in population])
        share_i = float((labels == key.pairs[:, 0]).float().mean())
        share_j = float((labels == key.pairs[:, 1]).float().mean())
        gen = key.report["generation"]
        line = json.dumps({"setting": setting, "base": " ".join(base[1:]), "keygen_s": round(seconds, 1), "threshold": key.decision["threshold_count"] / key.n,
                          "null_rate": round(key.decision["null_rate"], 3), "mean": round(sum(rates.values()) / len(rates), 3),
                          "max": max(rates.values()), "share_i": round(share_i, 3), "share_j": round(share_j, 3), "rates": rates, "reached": gen["reached"],
                          "sel_ref_match": round(gen["selected_reference_match_rate"], 3), "linf_mean": round(gen["linf_mean"], 3),
                          "host_j": gen["selected_host_answers_j"]})
        print(line)
        with open(RESULTS, "a") as fh:  # one JSON line per setting
            fh.write(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
