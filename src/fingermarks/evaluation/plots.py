"""Robustness figure: one panel per attack, strength on x; bit accuracy and match rate (solid) and clean
accuracy (dashed) on y, one colour per method. Drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from fingermarks.attacks import ATTACKS  # noqa: E402
from fingermarks.files import atomic_write  # noqa: E402

TITLES = {
    "ftal": "FTAL: fine-tune all layers",
    "ftll": "FTLL: fine-tune last layer",
    "rtal": "RTAL: re-init last layer, tune all",
    "rtal_head": "RTAL of the head: re-init the dense layers, tune all",
    "prune": "Weight pruning (global L1)",
    "adv_train": "FGSM adversarial training",
    "input_noise": "Gaussian input noise",
    "quantize": "Weight quantization",
    "distill": "Distillation (model extraction)",
    "extract": "Extraction, top-1 labels (query budget)",
    "extract_soft": "Extraction, probabilities (query budget)",
}
AXIS_LABELS = {
    "epochs": "epochs",
    "rate": "pruning rate (fraction of weights zeroed)",
    "std": "noise std (input units, pixels in [0, 1])",
    "iterations": "iterations (batches of 128 FGSM examples)",
    "bits": "weight bits (fewer = stronger)",
    "queries": "queries to the victim (student's training images)",
}
#: line style per metric: (label, linestyle, linewidth, marker)
STYLES = {
    "bit_acc": ("bit accuracy", "-", 2.2, "o"),
    "match_rate": ("match rate", "-", 1.2, "s"),
    "clean_acc": ("clean accuracy", "--", 1.5, None),
}


def _order(attacks) -> list[str]:
    known = [a for a in ATTACKS if a in set(attacks)]
    return known + sorted(set(attacks) - set(known))


def plot_robustness(points: pd.DataFrame, path: str | Path, descending_axes=frozenset()) -> Path:
    """Draw the figure from per-point aggregates (see `collect.aggregate`) and write it as PNG.

    Markers on the bit-accuracy line are filled where the owner's verdict (owned and right user
    traced) holds in every run, hollow where it fails; shaded bands span min..max over runs.
    """
    attacks = _order(points["attack"].unique())
    methods = list(dict.fromkeys(points["method"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    ncols = min(4, len(attacks))
    nrows = math.ceil(len(attacks) / ncols)
    width = max(4.6 * ncols, 11.0)  # room for the legend even with one or two panels
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.6 * nrows + 1.6), squeeze=False, layout="constrained")
    for ax, attack in zip(axes.flat, attacks):
        sub = points[points["attack"] == attack]
        axis = sub["axis"].iloc[0]
        for method, curve in sub.groupby("method", sort=False):
            curve = curve.sort_values("strength")
            x, colour = curve["strength"].astype(float), colours[method]
            for metric, (_, style, width, marker) in STYLES.items():
                if curve[metric].isna().all():
                    continue
                ax.plot(x, curve[metric], linestyle=style, linewidth=width, color=colour, alpha=0.95 if metric != "match_rate" else 0.7)
                if (curve["runs"] > 1).any():
                    ax.fill_between(x, curve[f"{metric}_min"], curve[f"{metric}_max"], color=colour, alpha=0.12, linewidth=0)
                if marker is not None:
                    holds = curve["holds"].astype(bool)
                    for filled in (True, False):
                        pick = holds if filled else ~holds
                        ax.scatter(x[pick], curve[metric][pick], marker=marker, s=36 if metric == "bit_acc" else 22, zorder=3,
                                   facecolors=colour if filled else "white", edgecolors=colour, linewidths=1.3)
            ax.axhline(curve["threshold"].iloc[0], color=colour, linestyle=":", linewidth=1.2)
        strengths = sorted(sub["strength"].astype(float).unique())
        for d in sub.loc[sub["default"].astype(bool), "strength"].astype(float).unique():
            ax.axvline(d, color="0.35", linestyle="-.", linewidth=1.0)
            # label on the roomier side of the line, so it never runs off the panel
            span = (d - strengths[0]) / ((strengths[-1] - strengths[0]) or 1)
            right_half = (span < 0.5) if axis in descending_axes else (span > 0.5)
            ax.annotate("default", (d, 0.03), xytext=(-3 if right_half else 3, 0), textcoords="offset points",
                        ha="right" if right_half else "left", fontsize=8, color="0.3")
        if len(strengths) <= 9:
            ax.set_xticks(strengths)
            ax.set_xticklabels([f"{s:g}" for s in strengths], fontsize=8)
        if axis in descending_axes:
            ax.invert_xaxis()
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(TITLES.get(attack, attack), fontsize=11)
        ax.set_xlabel(AXIS_LABELS.get(axis, axis), fontsize=9)
        ax.set_ylabel("rate / accuracy", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(attacks):]:
        ax.axis("off")
    blank = Line2D([], [], linestyle="", label=" ")
    columns = [
        [Line2D([], [], color=colours[m], linewidth=4, label=m) for m in methods],
        [Line2D([], [], color="0.2", linestyle=s, linewidth=w, marker=mk, label=label) for label, s, w, mk in STYLES.values()],
        [Line2D([], [], color="0.2", linestyle=":", label="ownership threshold (match rate)"),
         Line2D([], [], color="0.35", linestyle="-.", label="default strength")],
        [Line2D([], [], color="0.2", marker="o", linestyle="", markerfacecolor="0.2", label="verdict holds (owned, right user)"),
         Line2D([], [], color="0.2", marker="o", linestyle="", markerfacecolor="white", label="verdict fails")],
    ]
    rows = max(len(c) for c in columns)
    # the legend fills column by column: pad each group to the same height so groups stay apart
    handles = [h for c in columns for h in c + [blank] * (rows - len(c))]
    data = ", ".join(str(d) for d in dict.fromkeys(points["data"])) if "data" in points else ""
    fig.suptitle(f"Robustness against removal attacks{f' ({data})' if data else ''}\n"
                 "bit accuracy and match rate (solid) vs clean accuracy of the attacked model (dashed)", fontsize=12)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(columns), fontsize=9, frameon=False)

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
