"""Embedding settings side by side: epochs, seconds, accuracy drop, the matched count per epoch, noise margin.

    python benchmarks/probe_embedding.py [--users 2] "" "method.embedding.readmit_prob=0.9 ..." ...

Each argument is one setting (space-separated Hydra overrides on top of the defaults). The host comes
from the cache; the key is made once from the passphrase `probe-0` (4 registered users) and kept in
`--key` so every setting embeds the same users of the same key. Per user: embedding seconds and
epochs, accuracy drop against the host (test set), the history of (epoch, clean fraction p, matched,
active, smallest target probability) and the share of triggers still giving their target under
Gaussian input noise of std 0.2 and 0.3 (3 noise draws). One JSON line per user goes to
benchmarks/results/probe_embedding.jsonl. Seconds are only comparable within one load of the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from hydra.utils import instantiate

from compose import ROOT, compose_config
from fingermarks.attacks.input_noise import NoisySuspect
from fingermarks.pipeline import make_context, obtain_host, obtain_key, user_names

RESULTS = ROOT / "benchmarks" / "results" / "probe_embedding.jsonl"


def kept_under_noise(model, key, user: str, std: float, draws: int = 3) -> float:
    target = key.target_labels(key.users[user])
    kept = [float((NoisySuspect(model, std, s, (0.0, 1.0), "noisy").labels(key.triggers) == target).float().mean())
            for s in range(draws)]
    return round(sum(kept) / draws, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2, help="users embedded per setting")
    parser.add_argument("--key", type=Path, default=Path(tempfile.gettempdir()) / "probe_embedding_key.pt")
    parser.add_argument("settings", nargs="*", default=[""])
    args = parser.parse_args()
    for setting in args.settings:
        out = Path(tempfile.mkdtemp(prefix="probe-"))
        base = ["trainer.enable_progress_bar=false", "overwrite_key=true", f"cache_dir={ROOT / '.cache'}", "users=4",
                "key_secret=probe-0"] + ([f"key_file={args.key}"] if args.key.exists() else [])
        cfg = compose_config(base + setting.split(), out)
        ctx = make_context(cfg, out)
        host, host_info = obtain_host(cfg, ctx)
        method = instantiate(cfg.method)
        key = obtain_key(cfg, method, host, ctx, user_names(cfg.users))
        if not args.key.exists():
            shutil.copy(out / "key.pt", args.key)
        for index, user in enumerate(list(key.users)[: args.users]):
            model, info = method.embed(host, key, user, ctx, 1000 + index)
            row = {"setting": setting, "user": user, "host_s": round(host_info["train_seconds"], 1),
                   "s": round(info["embed_seconds"], 1), "epochs": info["embed_epochs"],
                   "kept_noise": {std: kept_under_noise(model, key, user, std) for std in (0.2, 0.3)},
                   "drop": round(100 * (host_info["clean_acc"] - info["clean_acc"]), 2),
                   "hist": [(h["epoch"], round(h["p"], 2), h["matched"], h["active"], round(h["min_target_prob"], 2))
                            for h in info["history"]]}
            print(json.dumps(row), flush=True)
            with open(RESULTS, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
