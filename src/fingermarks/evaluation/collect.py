"""Turn a sweep directory into one tidy table, a summary and the robustness figure.

    python -m fingermarks.evaluation.collect <sweep_dir> [--out DIR]

Finds every `robustness.csv` under the sweep (Hydra multirun: `<sweep>/<job>/robustness.csv`) and
writes `robustness_all.csv`, `robustness_summary.md` and `robustness.png` into `--out` (default:
the sweep directory).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fingermarks.attacks import ATTACKS
from fingermarks.evaluation.plots import plot_robustness
from fingermarks.evaluation.robustness import CURVES
from fingermarks.files import atomic_write

#: axes on which a smaller value is the stronger attack (weight bits)
DESCENDING_AXES = frozenset(cls.axis for cls in ATTACKS.values() if cls.descending)
#: "keeps its clean accuracy": at most this many points below the unattacked model
ACC_TOLERANCE = 5.0
#: the summary's columns for the default point
AT_DEFAULT = ("default", "clean_acc", "acc_drop", "match_rate", "bit_acc", "owned", "traced", "2e+f / budget")
#: attacks whose axis is a query-evasion detector's false-positive rate
EVASION_AXES = frozenset({"fpr"})


#: columns a robustness.csv of an earlier version may lack, with the value that means "not measured"
NEW_COLUMNS = {"colluders": None, "innocent_accused": False, "accused": None, "attacker_images": None,
               "host_attacker_acc": None, "triggers_flagged": None, "clean_flagged": None}


def read_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """All rows of all `robustness.csv` files under `sweep_dir`, with the job folder as `run`."""
    sweep_dir = Path(sweep_dir)
    paths = sorted(sweep_dir.rglob("robustness.csv"))
    if not paths:
        raise FileNotFoundError(f"no robustness.csv under {sweep_dir}")
    frames = [pd.read_csv(p).assign(run=str(p.parent.relative_to(sweep_dir))) for p in paths]
    rows = pd.concat(frames, ignore_index=True)
    for column, missing in NEW_COLUMNS.items():
        if column not in rows:
            rows[column] = missing
    for column in ("owned", "traced_correctly", "default", "innocent_accused"):
        rows[column] = rows[column].astype(str).str.lower().eq("true")
    return rows


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack, method, strength): means over runs, min..max spread, and whether the
    verdict (owned and a right user traced: the victim, or a colluder) holds in every run; how many
    runs accused an innocent user."""
    rows = rows.assign(holds=rows["owned"] & rows["traced_correctly"], budget=rows["min_distance"] - rows["min_margin"],
                       spent=2 * rows["bit_errors"] + rows["erasures"])
    for column in ("host_attacker_acc", "triggers_flagged", "clean_flagged"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    stats = {m: (m, "mean") for m in CURVES}
    stats |= {f"{m}_{f}": (m, f) for m in CURVES for f in ("min", "max")}
    stats |= dict(acc_drop=("acc_drop", "max"), threshold=("threshold", "mean"), owned=("owned", "mean"),
                  traced=("traced_correctly", "mean"), holds=("holds", "all"), default=("default", "any"),
                  innocent=("innocent_accused", "sum"), host_attacker_acc=("host_attacker_acc", "mean"),
                  triggers_flagged=("triggers_flagged", "mean"), clean_flagged=("clean_flagged", "mean"),
                  spent=("spent", "max"), budget=("budget", "min"), runs=("run", "size"), data=("data", "first"))
    return rows.groupby(["attack", "axis", "method", "strength"], sort=False).agg(**stats).reset_index()


def _by_strength(points: pd.DataFrame) -> pd.DataFrame:
    """Weakest point first (fewer bits is stronger on descending axes)."""
    descending = points["axis"].iloc[0] in DESCENDING_AXES
    return points.sort_values("strength", ascending=not descending)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _strength(value) -> str:
    return f"{float(value):g}"


def attack_order(names) -> list[str]:
    """Attacks in the registry's order, each preset (`ftal_lr`, `ftal_adam`, `prune_layer`) right after
    the attack it is a preset of; unknown names last, alphabetically."""
    known = list(ATTACKS)

    def rank(name: str) -> tuple:
        base = max((a for a in known if name == a or name.startswith(a + "_")), key=len, default=None)
        return (known.index(base), name != base, name) if base is not None else (len(known), True, name)

    return sorted(dict.fromkeys(names), key=rank)


def summarise(points: pd.DataFrame) -> pd.DataFrame:
    """Per attack and method: the default point, how far the verdict holds while accuracy is kept,
    and where it fails (honestly: the weakest such failure)."""
    out = []
    order = {a: i for i, a in enumerate(attack_order(points["attack"]))}
    points = points.sort_values("attack", key=lambda col: col.map(order), kind="stable")
    for (attack, method), curve in points.groupby(["attack", "method"], sort=False):
        curve = _by_strength(curve).reset_index(drop=True)
        kept = curve["acc_drop"] <= ACC_TOLERANCE
        failed = curve[kept & ~curve["holds"]]
        # held without a break: a verdict that fails and comes back further on is not "holding"
        first_failure = failed.index[0] if len(failed) else len(curve)
        held = curve[kept & curve["holds"] & (curve.index < first_failure)]
        lost = curve[~kept]
        default = curve[curve["default"]]
        d = default.iloc[0] if len(default) else None
        at_default = {
            "default": _strength(d["strength"]), "clean_acc": _fmt(d["clean_acc"]), "acc_drop": _fmt(d["acc_drop"], 1),
            "match_rate": _fmt(d["match_rate"]), "bit_acc": _fmt(d["bit_acc"]), "owned": _fmt(d["owned"], 2),
            "traced": _fmt(d["traced"], 2), "2e+f / budget": f"{_fmt(d['spent'], 0)} / {_fmt(d['budget'], 0)}",
        } if d is not None else dict.fromkeys(AT_DEFAULT, "-")
        out.append({
            "attack": attack, "method": method, "axis": curve["axis"].iloc[0], "runs": int(curve["runs"].max()),
            **at_default,
            "holds up to": _strength(held["strength"].iloc[-1]) if len(held) else "none",
            "fails at (acc kept)": _strength(failed["strength"].iloc[0]) if len(failed) else "never",
            "acc lost from": _strength(lost["strength"].iloc[0]) if len(lost) else "never",
            "innocent accused": int(curve["innocent"].sum()),
        })
    return pd.DataFrame(out)


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def codebook_notes(points: pd.DataFrame) -> list[str]:
    """Where tracing survived more bit errors than the codebook guarantees, and where it failed within it."""
    beyond = points[(points["spent"] > points["budget"]) & (points["traced"] == 1)]
    within = points[(points["spent"] <= points["budget"]) & (points["owned"] == 1) & (points["traced"] < 1)]
    lines = []
    for label, frame in (("traced although 2e+f exceeded the guarantee", beyond), ("not traced although 2e+f was within it", within)):
        where = ", ".join(f"{r.attack} {r.axis}={r.strength:g} ({r.method})" for r in frame.itertuples()) or "none"
        lines.append(f"- {label}: {where}")
    return lines


def evasion_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per method and detector false-positive rate: what the detector flags and what verification says."""
    evasion = points[points["axis"].isin(EVASION_AXES)]
    out = []
    for (attack, method), curve in evasion.groupby(["attack", "method"], sort=False):
        for r in _by_strength(curve).itertuples():
            out.append({"attack": attack, "method": method, "fpr (target)": _strength(r.strength),
                        "clean flagged": _fmt(r.clean_flagged), "triggers flagged": _fmt(r.triggers_flagged),
                        "clean_acc": _fmt(r.clean_acc), "match_rate": _fmt(r.match_rate), "bit_acc": _fmt(r.bit_acc),
                        "owned": _fmt(r.owned, 2), "traced": _fmt(r.traced, 2)})
    return pd.DataFrame(out)


def summary_markdown(points: pd.DataFrame) -> str:
    table = summarise(points)
    budget = points["budget"].dropna()
    host = points["host_attacker_acc"].dropna()
    evasion = evasion_table(points)
    lines = [
        "# Robustness summary",
        "",
        f"Values at each attack's default strength (means over {int(points['runs'].max())} run(s) per point). "
        f"*Accuracy kept*: clean accuracy of the attacked model at most {ACC_TOLERANCE:g} points below the unattacked "
        "model in every run. *Verdict holds*: owned and the right user traced in every run (under collusion: one of "
        "the colluders named). "
        "*holds up to*: strongest point with accuracy kept where the verdict holds, at it and at every weaker such point; "
        "*fails at*: weakest point with accuracy kept where it does not (the attack succeeds there); *acc lost from*: weakest point where the attack "
        "costs more than the tolerance; *innocent accused*: attacked models (all points and runs) traced to a user who "
        "was neither the victim nor a colluder.",
        "",
        markdown_table(table),
        "",
        f"Innocent users accused over the whole sweep: **{int(points['innocent'].sum())}**.",
    ]
    if len(host):
        lines += ["", f"Host accuracy on the attacker's images: {host.mean():.3f} (min {host.min():.3f}, max {host.max():.3f})."]
    if len(evasion):
        lines += ["", "## Query evasion", "",
                  "The thief's endpoint answers a random label where its detector fires; *clean flagged* is measured on "
                  "the test images, *triggers flagged* on the key's triggers.", "", markdown_table(evasion)]
    lines += [
        "",
        "## Tracing and the user codebook",
        "",
        "With e wrong bits and f erased bits (labels outside the trigger's pair), the right ID is at distance e and "
        "any other at least d - f - e, so nearest-ID decoding with the required margin m is guaranteed while "
        f"2e + f <= d - m (the budget; here {_fmt(budget.min(), 0)}). Beyond it tracing may still succeed by luck of "
        "where the errors fall, or fail; the p-value rule can also refuse a decodable word.",
        "",
        *codebook_notes(points),
        "",
    ]
    return "\n".join(lines)


def collect(sweep_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write the tidy table, the summary and the figure; return their paths."""
    out = Path(out or sweep_dir)
    rows = read_sweep(sweep_dir)
    points = aggregate(rows)
    paths = {"csv": out / "robustness_all.csv", "summary": out / "robustness_summary.md", "figure": out / "robustness.png"}
    atomic_write(paths["csv"], lambda tmp: rows.to_csv(tmp, index=False))
    text = summary_markdown(points)
    atomic_write(paths["summary"], lambda tmp: Path(tmp).write_text(text))
    plot_robustness(points, paths["figure"], descending_axes=DESCENDING_AXES)
    return paths


def sweep_cli(argv: list[str] | None, description: str, build, shown: str) -> None:
    """`<module> SWEEP_DIR [--out DIR]`: run `build(sweep_dir, out)`, print its `shown` output and every path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (Hydra multirun) holding robustness.csv files")
    parser.add_argument("--out", type=Path, default=None, help="where to write the outputs (default: the sweep directory)")
    args = parser.parse_args(argv)
    try:
        paths = build(args.sweep_dir, args.out)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(paths[shown].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def main(argv: list[str] | None = None) -> None:
    sweep_cli(argv, __doc__.split("\n\n")[0], collect, "summary")


if __name__ == "__main__":
    main()
