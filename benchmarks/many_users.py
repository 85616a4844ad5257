"""How a run scales with the number of users: `python train.py users=N` for N = 1, 10, 100.

    python benchmarks/many_users.py                          # N = 1, 10, 100 on mnist5k (all embedded)
    python benchmarks/many_users.py --counts 1,10 --embed 100 data=digits
    python benchmarks/many_users.py --counts 100 --embed 20  # 100 registered, the first 20 embedded

Each N is one whole run of the pipeline in a fresh run directory: the host (and the owner's reference
models) from the project cache (a key-only run first fills it, unless --no-warmup), a fresh key with N registered users, N users embedded (or the first
`--embed` of them: `embed_users=:E`, so the registry keeps its size), every embedded user's ONNX model
and the host verified. Measured: wall time of the run and of each stage, seconds per embedded user,
accuracy drop per user, tracing. Writes benchmarks/results/many_users.json (one entry per N, merged
with earlier entries of other N) and the scaling figure benchmarks/results/many_users.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from compose import ROOT, compose_config
from fingermarks.pipeline import run

RESULTS = Path(__file__).parent / "results"


def measure(count: int, embed: int | None, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"many-users-{count}-"))
    chosen = min(count, embed) if embed is not None else count
    cfg = compose_config([f"users={count}", f"embed_users=:{chosen}", f"cache_dir={ROOT / '.cache'}", *overrides], out)
    load_before = os.getloadavg()
    start = time.perf_counter()
    summary = run(cfg, out)
    wall = time.perf_counter() - start
    users = summary["users"]
    drops = [u["acc_drop"] for u in users.values()]
    embed_s = [u["embed_seconds"] for u in users.values()]
    reports = summary["verification"]
    verify_total = summary["verify_seconds"] * len(reports)
    return {
        "registered": count,
        "embedded": len(users),
        "overrides": overrides,
        "wall_seconds": wall,
        "host_seconds": summary["host"]["train_seconds"],
        "host_cached": summary["host"]["cached"],
        "keygen_seconds": summary["key"]["keygen_seconds"],
        "fingerprint_seconds": (summary["key"]["generation"] or {}).get("seconds"),
        "embed_seconds_total": sum(embed_s),
        "embed_seconds_per_user": statistics.mean(embed_s),
        "embed_seconds_per_user_max": max(embed_s),
        "wall_seconds_per_embedded_user": wall / len(users),
        "embed_to_host_time": statistics.mean(embed_s) / summary["host"]["train_seconds"],
        "verify_seconds_total": verify_total,
        "acc_drop_mean": statistics.mean(drops),
        "acc_drop_max": max(drops),
        "acc_drop_per_user": drops,
        "embed_seconds_each": embed_s,
        "embed_epochs_each": [u["embed_epochs"] for u in users.values()],
        # per user and epoch: (epoch, triggers matched, weakest target probability); benchmarks/plateau_replay.py
        "history_each": history_each(summary),
        "all_matched": all(u["all_matched"] for u in users.values()),
        "matched_each": [u.get("matched") for u in users.values()],
        "owned": sum(bool(reports[u]["owned"]) for u in users),
        "traced_correctly": sum(reports[u]["traced_user"] == u for u in users),
        "host_claimed": bool(reports["host"]["owned"]),
        "min_distance": summary["key"]["min_distance"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "run_dir": str(out),
    }


def history_each(summary: dict) -> list[list[tuple[int, int, float]]]:
    """Each user's embedding history as (epoch, matched, min_target_prob) rows, in the summary's user order."""
    return [[(h["epoch"], h["matched"], round(h["min_target_prob"], 4)) for h in u.get("history", [])]
            for u in summary["users"].values()]


def measure_warmup(overrides: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix="many-users-warmup-"))
    run(compose_config(["users=1", "embed_users=[]", f"cache_dir={ROOT / '.cache'}", *overrides], out), out)


def figure(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = sorted(entries, key=lambda e: e["registered"])
    n = [e["registered"] for e in entries]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    ax1.plot(n, [e["wall_seconds"] for e in entries], "o-", label="whole run (wall)")
    ax1.plot(n, [e["embed_seconds_total"] for e in entries], "s-", label="embedding (all users)")
    ax1.plot(n, [e["keygen_seconds"] for e in entries], "^-", label="key generation")
    ax1.plot(n, [e["verify_seconds_total"] for e in entries], "v-", label="verification (all models)")
    for e in entries:
        if e["embedded"] < e["registered"]:
            ax1.annotate(f"{e['embedded']} of {e['registered']}\nembedded", (e["registered"], e["wall_seconds"]),
                         textcoords="offset points", xytext=(-55, -30), fontsize=8)
    ax1.set(xscale="log", yscale="log", xlabel="registered users", ylabel="seconds", title="time per run")
    ax1.legend(fontsize=8)
    ax2.plot(n, [e["embed_seconds_per_user"] for e in entries], "s-", label="embedding, mean per user")
    ax2.plot(n, [e["wall_seconds_per_embedded_user"] for e in entries], "o-", label="whole run / users embedded")
    ax2.set(xscale="log", yscale="log", xlabel="registered users", ylabel="seconds per user", title="cost per user")
    ax2.legend(fontsize=8)
    for e in entries:
        ax3.scatter([e["registered"]] * len(e["acc_drop_per_user"]), e["acc_drop_per_user"], s=10, alpha=0.5)
    ax3.plot(n, [e["acc_drop_mean"] for e in entries], "k-", label="mean")
    ax3.axhline(0, color="grey", lw=0.5)
    ax3.set(xscale="log", xlabel="registered users", ylabel="accuracy drop (points)", title="accuracy drop per user")
    ax3.legend(fontsize=8)
    load = max(max(e["load_average_before"][0], e["load_average_after"][0]) for e in entries)
    fig.suptitle(f"users=N on {entries[0]['cpus']} CPU cores (1-min load average up to {load:.1f}); "
                 f"{' '.join(entries[0]['overrides']) or 'defaults'}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,100", help="registered users per run, comma-separated")
    parser.add_argument("--embed", type=int, default=None, help="embed at most this many users of each registry")
    parser.add_argument("--name", default="many_users", help="results/<name>.json and .png")
    parser.add_argument("--no-warmup", action="store_true", help="skip the key-only run that fills the model cache")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from the JSON")
    args = parser.parse_args()
    overrides = ["trainer.enable_progress_bar=false", *args.overrides]
    if args.plot_only:
        path = RESULTS / f"{args.name}.json"
        figure(json.loads(path.read_text())["runs"], path.with_suffix(".png"))
        return
    if not args.no_warmup:  # the host and the owner's reference models into the cache, so no N pays for them
        measure_warmup(overrides)
    path = RESULTS / f"{args.name}.json"
    entries = {e["registered"]: e for e in json.loads(path.read_text())["runs"]} if path.exists() else {}
    for count in (int(c) for c in args.counts.split(",")):
        entry = measure(count, args.embed, overrides)
        if entries and any(e["overrides"] != overrides for e in entries.values()):
            entries = {}  # other settings: start the table again
        entries[count] = entry
        print(json.dumps({k: v for k, v in entry.items() if not k.endswith(("_each", "_per_user"))}), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"runs": sorted(entries.values(), key=lambda e: e["registered"])}, indent=1) + "\n")
        figure(list(entries.values()), path.with_suffix(".png"))


if __name__ == "__main__":
    main()
