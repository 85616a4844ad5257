"""Measure the whole FingerMarks chain on mnist5k in one run.

    python benchmarks/fingermarks_mnist5k.py [hydra overrides ...]
    BENCH_FRESH=1 python benchmarks/fingermarks_mnist5k.py      # with an empty model cache

Trained models come from the project cache (.cache/) unless BENCH_FRESH=1; a cached model
carries the training time measured when it was trained.

Writes benchmarks/results/fingermarks_mnist5k[_<overrides>].json: host training time, key generation time
(reference/null model training and the fingerprint optimisation separately), embedding time
and accuracy drop per user, verification time, and the uniqueness table, on the default independent
population and on a held-out one (`uniqueness.seed_base=40000`) that no default was tuned on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from omegaconf import open_dict

from compose import ROOT, compose_config
from fingermarks.evaluation.uniqueness import uniqueness
from fingermarks.files import save_json
from fingermarks.key import load_key
from fingermarks.pipeline import make_context, run

HELD_OUT_SEED_BASE = 40_000


def main(overrides: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-"))
    cache = out / "cache" if os.environ.get("BENCH_FRESH") else ROOT / ".cache"
    cfg = compose_config(["experiment=uniqueness", "trainer.enable_progress_bar=false", f"cache_dir={cache}", *overrides], out)
    summary = run(cfg, out)
    host_s = summary["host"]["train_seconds"]
    trained = summary["trained"]
    # reference/null models are only loaded when the key is made; with a cached key there is nothing to time
    owner = [v["train_seconds"] for k, v in trained.items() if k.startswith(("reference", "null"))]
    users = summary["users"]
    result = {
        "overrides": overrides,
        "host_train_seconds": host_s,
        "host_clean_acc": summary["host"]["clean_acc"],
        "owner_reference_models_seconds": sum(owner) if owner else None,
        "key_from_cache": not owner,
        "fingerprint_seconds": summary["key"]["generation"]["seconds"],
        "keygen_seconds": summary["key"]["keygen_seconds"],
        "embed_seconds": {u: v["embed_seconds"] for u, v in users.items()},
        "embed_epochs": {u: v["embed_epochs"] for u, v in users.items()},
        "acc_drop_points": {u: v["acc_drop"] for u, v in users.items()},
        "embed_to_host_time_ratio": max(v["embed_seconds"] for v in users.values()) / host_s,
        "verify_seconds": summary["verify_seconds"],
        "verification": {k: {f: v[f] for f in ("owned", "match_rate", "bit_acc", "traced_user", "hamming", "margin", "p_value")}
                         for k, v in summary["verification"].items()},
        "min_distance": summary["key"]["min_distance"],
        "decision": summary["key"]["decision"],
        "uniqueness": summary["uniqueness"],
        "uniqueness_held_out": held_out_uniqueness(cfg, out),
        "run_dir": str(out),
    }
    # overrides name their own file: `... seed=1` writes fingermarks_mnist5k_seed=1.json
    suffix = "".join("_" + re.sub(r"[^A-Za-z0-9=.,-]+", "-", o) for o in overrides)
    path = save_json(result, ROOT / "benchmarks" / "results" / f"fingermarks_mnist5k{suffix}.json")
    print(f"written {path}")


def held_out_uniqueness(cfg, out: Path) -> dict:
    """The uniqueness table again on independent models with fresh seeds (not used to pick any default)."""
    with open_dict(cfg):
        cfg.uniqueness.seed_base = HELD_OUT_SEED_BASE
    return uniqueness(load_key(out / "key.pt"), make_context(cfg, out), cfg.uniqueness, int(cfg.seed))


if __name__ == "__main__":
    main(sys.argv[1:])
