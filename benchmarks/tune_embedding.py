"""Find FingerMarks embedding settings by experiment: epochs, time and accuracy drop per user.

    python benchmarks/tune_embedding.py "" "method.embedding.optimizer.lr=1e-4" ...

Each argument is one setting (space-separated Hydra overrides). The key is the cached default
key (embedding settings do not change it); every setting embeds every user from the same host.
One JSON line per setting goes to benchmarks/results/tune_embedding.jsonl.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from hydra.utils import instantiate

from compose import compose_config
from fingermarks.pipeline import make_context, obtain_host, obtain_key, user_names

RESULTS = Path(__file__).parent / "results" / "tune_embedding.jsonl"


def main(settings: list[str]) -> None:
    base = ["trainer.enable_progress_bar=false", "overwrite_key=true", *os.environ.get("TUNE_BASE", "").split()]
    for setting in settings or [""]:
        out = Path(tempfile.mkdtemp(prefix="tune-embed-"))
        cfg = compose_config(base + setting.split(), out)
        ctx = make_context(cfg, out)
        host, host_info = obtain_host(cfg, ctx)
        method = instantiate(cfg.method)
        users = user_names(cfg.users)
        key = obtain_key(cfg, method, host, ctx, users)
        rows = {}
        for index, user in enumerate(users):
            _, info = method.embed(host, key, user, ctx, int(cfg.seed) * 1000 + index + 1)  # the pipeline's user seed
            rows[user] = {"epochs": info["embed_epochs"], "seconds": round(info["embed_seconds"], 1), "matched": info["all_matched"],
                          "drop": round(100 * (host_info["clean_acc"] - info["clean_acc"]), 2),
                          "min_target_prob": round(info["history"][-1]["min_target_prob"], 3)}
        line = json.dumps({"setting": setting, "base": " ".join(base[2:]), "host_seconds": round(host_info["train_seconds"], 1),
                           "max_drop": max(r["drop"] for r in rows.values()), "max_seconds": max(r["seconds"] for r in rows.values()),
                           "all_matched": all(r["matched"] for r in rows.values()), "users": rows})
        print(line, flush=True)
        with open(RESULTS, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
