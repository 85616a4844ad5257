"""Replay the embedding's stopping rules on recorded per-epoch histories: how many epochs each user and each group
of users would have trained under another `done_prob` / plateau stop / epoch cap.

    python benchmarks/plateau_replay.py results/plateau_off40.json [--group 4] [--triggers 128]

The histories (`history_each` of benchmarks/many_users.py: epoch, triggers matched, weakest target probability) must
come from a run without a plateau stop, so that every trajectory runs to `done_prob` or to the cap. A replay moves the
stopping epoch only: it cannot tell how a user stopped earlier would have changed its group's later steps (a group
shares its steps per epoch), so it estimates the epochs saved, and the measured runs settle the rest (README "A
plateau stop"). A group's length is its slowest user's epochs, users grouped in registry order as the pipeline does.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fingermarks.embedding import plateaued

#: (plateau_epochs, plateau_prob, plateau_delta, max_epochs); plateau_epochs 0: no plateau stop
SETTINGS = [(0, 0.0, 0.0, 30), (3, 0.7, 0.01, 30), (3, 0.6, 0.01, 30), (2, 0.6, 0.01, 30), (2, 0.6, 0.02, 30),
            (0, 0.0, 0.0, 20), (0, 0.0, 0.0, 15)]


def stop(history: list[list[float]], triggers: int, done_prob: float, plateau_epochs: int, plateau_prob: float,
         plateau_delta: float, max_epochs: int) -> tuple[int, float]:
    """(epoch, weakest target probability) where a user with this history ((epoch, matched, weakest) rows) stops under
    the rule (DynamicRatio.judge: every trigger matched at done_prob, or `plateaued`; or the cap)."""
    for k, (epoch, matched, weakest) in enumerate(history):
        if matched == triggers and weakest >= done_prob:
            return epoch, weakest
        if plateaued([row[2] for row in history[:k + 1]], matched == triggers, plateau_epochs, plateau_prob, plateau_delta):
            return epoch, weakest
        if epoch >= max_epochs:
            return epoch, weakest
    return history[-1][0], history[-1][2]


def replay(histories: list[list[list[float]]], group: int, triggers: int, done_prob: float) -> list[dict]:
    rows = []
    for setting in SETTINGS:
        stops = [stop(h, triggers, done_prob, *setting) for h in histories]
        epochs = [e for e, _ in stops]
        groups = [max(epochs[i:i + group]) for i in range(0, len(epochs), group)]
        below = [p for _, p in stops if p < done_prob]
        rows.append({"plateau_epochs": setting[0], "plateau_prob": setting[1], "plateau_delta": setting[2],
                     "max_epochs": setting[3], "epochs_mean": statistics.mean(epochs), "group_epochs_mean": statistics.mean(groups),
                     "stopped_short_of_done_prob": len(below), "weakest_at_stop_min": min(below) if below else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="benchmarks/many_users.py results with history_each")
    parser.add_argument("--group", type=int, default=4, help="users per run (method.embedding.stack_users)")
    parser.add_argument("--triggers", type=int, default=128)
    parser.add_argument("--done-prob", type=float, default=0.8)
    args = parser.parse_args()
    for path in args.results:
        for run in json.loads(path.read_text())["runs"]:
            if not run.get("history_each"):
                raise SystemExit(f"{path}: a run without history_each (recorded by many_users.py since the plateau stop)")
            print(f"{path.name}: {run['embedded']} users, overrides {' '.join(run['overrides']) or '-'}")
            print("plateau_epochs | plateau_prob | plateau_delta | max_epochs | epochs, mean | group's epochs, mean | "
                  "stopped short of done_prob | weakest then, lowest")
            for r in replay(run["history_each"], args.group, args.triggers, args.done_prob):
                print(" | ".join("-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()))


if __name__ == "__main__":
    main()
