"""The robustness figure and table of the tracing channel: per attack and strength, the share of the leaked
users named (and of copies called ours), with the attacked models' clean accuracy.

    python benchmarks/robustness_figure.py --sources today probes_adv_aa1e-05 [--name robustness_today]

Each source is a summary written by `tracing_channel.py` (`results/tracing_channel_<source>.json`, decided
under the default rule, `balanced`); its JSONL (`tracing_channel_<tag>.jsonl`, the tag being the source up to
its first re-decision suffix) gives each attack's axis and default strength. A (attack, strength) cell found
in several sources is taken from the first. Writes results/<name>.png and results/<name>.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from compose import ROOT  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RULE = "balanced"
#: panel order and titles; attacks not listed follow in the order found
TITLES = {
    "ftal": "FTAL (WRT: SGD 1e-3)", "rtal": "RTAL (WRT)", "ftll": "FTLL (WRT)", "ftal_adam": "FTAL with Adam 1e-3",
    "rtal_head": "RTAL of the dense head (SGD)", "rtal_head_adam": "RTAL of the dense head (Adam 1e-3)",
    "prune": "global pruning", "prune_layer": "per-layer pruning", "fine_prune": "fine-pruning",
    "onnx_int8": "onnxruntime int8", "input_noise": "input noise (15 reads)", "evasion": "query evasion (detector FPR)",
    "adv_train": "FGSM adversarial training (eps)", "collude_average": "collusion: weight average",
    "collude_vote": "collusion: majority vote",
}


def tag_of(source: str) -> str:
    """The run's tag: the source without tracing_channel.py's re-decision suffixes (_ta, _aa, _r, _nl)."""
    return re.sub(r"(_ta[0-9.e+-]+)?(_aa[0-9.e+-]+)?(_r[0-9]+)?(_nl)?$", "", source)


def load(sources: list[str]) -> tuple[dict, dict]:
    """Cells {(attack, strength): row} (first source wins) and {attack: (axis, default strength)}."""
    cells, axes = {}, {}
    for source in sources:
        summary = json.loads((RESULTS / f"tracing_channel_{source}.json").read_text())
        for row in summary["rows"]:
            cells.setdefault((row["attack"], float(row["strength"])), row | {"source": source})
        for line in (RESULTS / f"tracing_channel_{tag_of(source)}.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            axis, default = axes.get(d["attack"], (d["axis"], None))
            axes[d["attack"]] = (axis, float(d["strength"]) if d["default"] else default)
    return cells, axes


def seeds_of(row: dict) -> str:
    per = row.get(f"traced_per_seed[{RULE}]", {})
    return " / ".join(str(v) for _, v in sorted(per.items(), key=lambda kv: int(kv[0])))


def table(cells: dict, axes: dict) -> str:
    lines = ["| attack | axis | strength | models | clean acc | traced | owned | traced per seed | innocents named | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for attack in ordered(cells):
        axis, default = axes.get(attack, ("", None))
        for (a, s), row in sorted((k, v) for k, v in cells.items() if k[0] == attack):
            m = row["models"]
            mark = " (default)" if default is not None and math.isclose(s, default) else ""
            lines.append(f"| {a} | {axis} | {s:g}{mark} | {m} | {row['clean_acc']:.3f} | {round(row[f'traced[{RULE}]'] * m)} of {m} "
                         f"| {round(row[f'owned[{RULE}]'] * m)} of {m} | {seeds_of(row)} | {row[f'innocent[{RULE}]']} | {row['source']} |")
    innocents = sum(r[f"innocent[{RULE}]"] for r in cells.values())
    models = sum(r["models"] for r in cells.values())
    lines += ["", f"Innocent users named: {innocents} in {models} attacked models."]
    return "\n".join(lines)


def ordered(cells: dict) -> list[str]:
    found = list(dict.fromkeys(a for a, _ in cells))
    return [a for a in TITLES if a in found] + [a for a in found if a not in TITLES]


def figure(cells: dict, axes: dict, path) -> None:
    attacks = ordered(cells)
    cols = 4
    rows = math.ceil(len(attacks) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    for ax, attack in zip(axs.flat, attacks):
        pts = sorted((s, r) for (a, s), r in cells.items() if a == attack)
        xs = list(range(len(pts)))
        ax.plot(xs, [r[f"traced[{RULE}]"] for _, r in pts], "o-", color="tab:blue", lw=2, label="leaker named")
        ax.plot(xs, [r[f"owned[{RULE}]"] for _, r in pts], "s:", color="tab:green", mfc="none", ms=8, label="called ours")
        ax.plot(xs, [r["clean_acc"] for _, r in pts], "--", color="grey", label="clean accuracy")
        axis, default = axes.get(attack, ("strength", None))
        for x, (s, _) in zip(xs, pts):
            if default is not None and math.isclose(s, default):
                ax.axvline(x, color="k", ls="-.", lw=0.8)
        ax.set_xticks(xs, [f"{s:g}" for s, _ in pts], fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(TITLES.get(attack, attack), fontsize=10)
        ax.set_xlabel(f"{axis} ({pts[0][1]['models']} models per point)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[len(attacks):]:
        ax.axis("off")
    axs.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("FingerMarks (default) against the attack suite, mnist5k, 3 seeds: share of leaked copies traced to their "
                 "user (a colluder, for collusion; solid),\ncalled ours (dotted), clean accuracy of the attacked model (dashed); "
                 "dash-dot: the attack's default strength", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", required=True, help="tracing_channel summaries (names after tracing_channel_)")
    parser.add_argument("--name", default="robustness_today")
    args = parser.parse_args()
    cells, axes = load(args.sources)
    text = table(cells, axes)
    (RESULTS / f"{args.name}.md").write_text(f"# Tracing under the attack suite (`python benchmarks/robustness_figure.py "
                                             f"--sources {' '.join(args.sources)} --name {args.name}`)\n\n{text}\n")
    figure(cells, axes, RESULTS / f"{args.name}.png")
    print(text)
    print(f"wrote {RESULTS / args.name}.png and .md")


if __name__ == "__main__":
    main()
