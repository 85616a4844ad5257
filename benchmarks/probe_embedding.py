"""Embedding settings side by side: epochs, seconds, accuracy drop, the matched count per epoch, noise margin.

    python benchmarks/probe_embedding.py [--users 2] "" "method.embedding.readmit_prob=0.9 ..." ...

Each argument is one setting (space-separated Hydra overrides on top of the defaults); with
`method.embedding.stack_users=k` the users are embedded k at a time (`embed_group`; each user's seconds are
its group's over k). The host comes
from the cache; the key is made once from the passphrase `probe-0` (4 registered users) and kept in
`--key` so every setting embeds the same users of the same key. Per user: embedding seconds and
epochs, accuracy drop against the host (test set), the history of (epoch, clean fraction p, matched,
active, smallest target probability) and the share of triggers still giving their target under
Gaussian input noise of std 0.2 and 0.3 (3 noise draws). One JSON line per user goes to
benchmarks/results/probe_embedding.jsonl. Seconds are only comparable within one load of the machine.

    python benchmarks/probe_embedding.py --deepfool-timing

times the DeepFool neighbour search of the first epoch (user1's unmatched triggers on the host) at
(candidates, max_iter) = (10, 50), the earlier setting, and (3, 10), today's, against one epoch of
training on the whole training set (3 repetitions, medians); and how close the two searches' neighbours
are. Writes benchmarks/results/probe_deepfool.json.
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


def kept_under_noise(model, key, user: str, std: float, input_range: tuple[float, float], draws: int = 3) -> float:
    target = key.target_labels(key.users[user])
    kept = [float((NoisySuspect(model, std, s, input_range, "noisy").labels(key.triggers) == target).float().mean())
            for s in range(draws)]
    return round(sum(kept) / draws, 3)


def deepfool_timing(key_path: Path, reps: int = 3) -> dict:
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from fingermarks.embedding.deepfool import deepfool
    from fingermarks.files import save_json
    from fingermarks.key import load_key

    out = Path(tempfile.mkdtemp(prefix="probe-deepfool-"))
    cfg = compose_config(["trainer.enable_progress_bar=false", f"cache_dir={ROOT / '.cache'}"], out)
    ctx = make_context(cfg, out)
    host, _ = obtain_host(cfg, ctx)
    host.eval()
    key = load_key(key_path)
    target = key.target_labels(key.users["user1"])
    with torch.no_grad():
        x = key.triggers[host(key.triggers).argmax(1) != target]

    def timed(fn) -> tuple[float, object]:
        times, result = [], None
        for _ in range(reps):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    row = {"triggers": len(x), "threads": torch.get_num_threads()}
    searches = {}
    for cand, iters in ((10, 50), (3, 10)):
        row[f"deepfool_{cand}x{iters}_s"], searches[cand] = timed(lambda: deepfool(host, x, candidates=cand, max_iter=iters))
    with torch.no_grad():
        a, b = host(searches[10]).argmax(1), host(searches[3]).argmax(1)
        row["same_label"] = float((a == b).float().mean())
        row["crossed"] = float((b != host(x).argmax(1)).float().mean())
        row["distance_ratio"] = float((searches[3] - x).flatten(1).norm(dim=1).mean() / (searches[10] - x).flatten(1).norm(dim=1).mean())
    ctx.datamodule.setup("fit")
    loader = torch.utils.data.DataLoader(ctx.datamodule.train_set, batch_size=64, shuffle=True)
    opt = torch.optim.Adam(host.parameters(), 1e-9)  # the timing of a step, not a change

    def epoch() -> None:
        host.train()
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(host(xb), yb).backward()
            opt.step()

    row["train_epoch_s"], _ = timed(epoch)
    row["train_images"] = len(ctx.datamodule.train_set)
    save_json(row, ROOT / "benchmarks" / "results" / "probe_deepfool.json")
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2, help="users embedded per setting")
    parser.add_argument("--key", type=Path, default=Path(tempfile.gettempdir()) / "probe_embedding_key.pt")
    parser.add_argument("--deepfool-timing", action="store_true")
    parser.add_argument("settings", nargs="*", default=[""])
    args = parser.parse_args()
    if args.deepfool_timing:
        deepfool_timing(args.key)
        return
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
        users = list(key.users)[: args.users]
        size = method.group_size(host)  # the users in groups of stack_users, one run each (embedding/stacked.py)
        made = ([result for start in range(0, len(users), size)
                 for result in method.embed_group(host, key, users[start:start + size], ctx,
                                                  [1000 + i for i in range(start, min(start + size, len(users)))])]
                if size > 1 else (method.embed(host, key, user, ctx, 1000 + index) for index, user in enumerate(users)))
        for user, (model, info) in zip(users, made):
            row = {"setting": setting, "user": user, "host_s": round(host_info["train_seconds"], 1),
                   "s": round(info["embed_seconds"], 1), "epochs": info["embed_epochs"], "steps": info["embed_steps"],
                   "kept_noise": {std: kept_under_noise(model, key, user, std, tuple(ctx.datamodule.input_range)) for std in (0.2, 0.3)},
                   "drop": round(100 * (host_info["clean_acc"] - info["clean_acc"]), 2),
                   "hist": [(h["epoch"], round(h["p"], 2), h["matched"], h["active"], round(h["min_target_prob"], 2))
                            for h in info["history"]]}
            print(json.dumps(row), flush=True)
            with open(RESULTS, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
