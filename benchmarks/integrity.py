"""The fragile (integrity) benchmark: the seed's Tables II-V on our data, every sensitive-sample scheme side by side.

    python benchmarks/integrity.py [--seeds 0 1 2] [--pairs 150] [--methods fragile fragile_dbi ...]
                                   [--timing-reps 3] [--timing-seeds 0] [hydra overrides, e.g. data=digits]

Per seed: the host (trained once, `.cache/`), one key per method from the passphrase
`integrity-<seed>-<method>` (150 pairs = 300 queries each), then one set of tampered hosts shared by every
method: the backdoor (10 marked images, Adam 1e-5 until it takes), fine-tuning along the learning rate
(1e-10 ... 1e-3, one epoch of Adam, BatchNorm frozen; plus one point with BatchNorm following the data),
global pruning of 0.1 % ... 10 %, onnxruntime int8 (dynamic and static), and one-weight changes (20
random weights per scale). Every key is queried on every tampered model; also on `validset` (300 random
test images, the seed's column). Benign handling (the calibration settings and held-out ones: another
ONNX graph optimisation level, odd chunk sizes, a save/load round trip, channels-last memory) is
measured as false alarms. Table V: stage-1 time of 1,000 iterations on 150 (and 300) samples, rounds
interleaved across methods.

Per sample: the fraction of the 300 queries whose label changed. Per pair: the fraction of the 150 pairs
(rows 2k, 2k+1; a baseline's are random pairs of single samples) with a change in either. Detected: the
key's verdict (tampered). Writes benchmarks/results/integrity_<data>_<model>[_<tag>].json and, from every
such file, the figure benchmarks/results/integrity_finetune_lr.png (`--figure-only` redraws it).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from compose import ROOT, compose_config
from fingermarks.attacks.base import make_attack
from fingermarks.files import save_json
from fingermarks.methods.base import frozen
from fingermarks.metrics import predict_labels
from fingermarks.model_io import export_onnx, load_model, save_model
from fingermarks.pipeline import make_context, public_decision
from fingermarks.secret import KeySecret
from fingermarks.suspects import ModuleSuspect, OnnxSuspect
from fingermarks.verification import verify_labels

RESULTS = ROOT / "benchmarks" / "results"
METHODS = ["fragile", "fragile_dbi", "fragile_aid", "fragile_ibsf"]
#: extra keys per seed: name -> (method config, overrides). `fragile_raw` is the seed's procedure without
#: our benign floor and selection (stage 2 stops at the boundary itself; allowance 0)
VARIANTS = {"fragile_raw": ("fragile", ["method.benign.margin_factor=0", "method.benign.select=false",
                                        "method.decision.allowance=0"])}


# -- detection on one suspect ---------------------------------------------------------------------
def detection(recorded: torch.Tensor, labels: torch.Tensor) -> dict:
    changed = labels != recorded
    return {"sample_rate": float(changed.float().mean()), "pair_rate": float(changed.view(-1, 2).any(1).float().mean()),
            "changed": int(changed.sum())}


def score(keys: dict, valid: dict, suspect) -> dict:
    """Each key's detection on one suspect (labels of all its samples in one batch), and validset's."""
    out = {}
    for name, key in keys.items():
        labels = suspect.labels(key.triggers)
        report = verify_labels(key, labels)
        out[name] = detection(key.pairs[:, 0], labels) | {"detected": bool(report.tampered)}
    labels = suspect.labels(valid["x"])
    out["validset"] = detection(valid["labels"], labels) | {"detected": bool((labels != valid["labels"]).any())}
    return out


# -- benign handling ------------------------------------------------------------------------------
class OrtChunks:
    """The ONNX export run by onnxruntime with a thread count, a graph optimisation level and a chunk size."""

    def __init__(self, path: Path, threads: int, level: str = "ORT_ENABLE_ALL", chunk: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.chunk = chunk

    def labels(self, x):
        step = self.chunk or len(x)
        arr = x.numpy().astype("float32")
        return torch.cat([torch.as_tensor(self.session.run(None, {"pixels": arr[i:i + step]})[0]).argmax(1)
                          for i in range(0, len(arr), step)])


class TorchChunks:
    def __init__(self, model, threads: int, chunk: int | None, channels_last: bool = False, name: str = "") -> None:
        self.model, self.threads, self.chunk, self.channels_last, self.name = model, threads, chunk, channels_last, name

    @torch.no_grad()
    def labels(self, x):
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model = copy.deepcopy(self.model).eval()
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            step = self.chunk or len(x)
            return torch.cat([model(x[i:i + step]).argmax(1) for i in range(0, len(x), step)])
        finally:
            torch.set_num_threads(before)


def benign_suspects(host, input_shape, folder: Path) -> dict[str, tuple[object, bool]]:
    """name -> (suspect, part of keygen's calibration). The held-out ones were never used to select samples."""
    onnx_path = export_onnx(copy.deepcopy(host).eval(), folder / "host.onnx", list(input_shape))
    save_model(host, folder / "host.ckpt")
    reloaded = load_model(folder / "host.ckpt")
    out = {}
    for t in (1, 2):
        out[f"torch/{t}t/batch-n"] = (TorchChunks(host, t, None), True)
        out[f"torch/{t}t/batch-1"] = (TorchChunks(host, t, 1), True)
        out[f"onnx/{t}t/batch-n"] = (OrtChunks(onnx_path, t), True)
        out[f"onnx/{t}t/batch-1"] = (OrtChunks(onnx_path, t, chunk=1), True)
    # held out: never seen by keygen
    out["held-out torch/2t/batch-7"] = (TorchChunks(host, 2, 7), False)
    out["held-out torch/1t/channels-last"] = (TorchChunks(host, 1, None, channels_last=True), False)
    out["held-out torch/save-load round trip"] = (TorchChunks(reloaded, 2, None), False)
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC"):
        out[f"held-out onnx/2t/{level}/batch-5"] = (OrtChunks(onnx_path, 2, level, chunk=5), False)
    out["held-out ModuleSuspect (verify.py)"] = (ModuleSuspect(host), False)
    out["held-out OnnxSuspect (verify.py)"] = (OnnxSuspect(onnx_path), False)
    return out


# -- tampering --------------------------------------------------------------------------------------
def attack_cfg(name: str, overrides: list[str], seed: int, out: Path, extra: list[str] = ()):
    return compose_config([f"attack={name}", f"seed={seed}", *overrides, *extra], out).attack


def tampered(host, ctx, overrides: list[str], seed: int, out: Path, one_weight_picks: int):
    """Yield (attack, strength, suspect, info) for every tampered host of this seed."""
    def data_for(attack):
        return attack.attacker_data(ctx.datamodule, [])

    patch = 2 if min(ctx.datamodule.input_shape[1:]) <= 8 else 3
    attack = make_attack(attack_cfg("backdoor", overrides, seed, out, [f"attack.patch={patch}"]))
    for strength, suspect in attack.run(host, data_for(attack), ctx):
        yield "backdoor", strength, suspect, attack.info[int(strength)]
    attack = make_attack(attack_cfg("ftal_weights_lr", overrides, seed, out))
    for strength, suspect in attack.run(host, data_for(attack), ctx):
        yield "finetune_lr", strength, suspect, {}
    # the same fine-tuning with BatchNorm following the attacker's data (train mode), at the smallest rates
    attack = make_attack(attack_cfg("ftal_lr", overrides, seed, out, ["attack/optimizer=adam", "attack.epochs=1",
                                                                      "attack.strengths=[1e-10,1e-7]", "attack.default=1e-7"]))
    for strength, suspect in attack.run(host, data_for(attack), ctx):
        yield "finetune_lr_bn_train", strength, suspect, {}
    attack = make_attack(attack_cfg("prune_small", overrides, seed, out))
    for strength, suspect in attack.run(host, data_for(attack), ctx):
        yield "prune", strength, suspect, {}
    attack = make_attack(attack_cfg("onnx_int8", overrides, seed, out, ["attack.strengths=[1,2]", "attack.default=2"]))
    for strength, suspect in attack.run(host, data_for(attack), ctx):
        yield "int8", strength, suspect, attack.files[int(strength)]
    for pick in range(one_weight_picks):
        attack = make_attack(attack_cfg("one_weight", overrides, seed * 1000 + pick, out))
        for strength, suspect in attack.run(host, data_for(attack), ctx):
            yield "one_weight", strength, suspect, attack.info[strength]


# -- Table V ----------------------------------------------------------------------------------------
def stage1_times(methods: dict, host, ctx, counts: list[int], reps: int, steps: int) -> dict:
    """Seconds of 1,000 stage-1 iterations on `count` samples per method, measured over `steps`
    iterations (no early stop: the cost per iteration is constant) and scaled; rounds interleaved."""
    times = {name: {c: {"wall": [], "cpu": []} for c in counts} for name in methods}
    dm = ctx.datamodule
    for rep in range(reps):
        for count in counts:
            for name, method in methods.items():
                secret = KeySecret.from_text(f"timing-{rep}-{count}")
                x0, _ = method.candidates(host, ctx, count, secret.generator("candidates"))
                timed = copy.copy(method)
                timed.gen = OmegaConf.merge(method.gen, {"steps": steps})
                cpu = time.process_time()
                _, seconds = timed.stage1(host, x0, tuple(dm.input_range), secret.generator("heads"))
                cpu = (time.process_time() - cpu) * 1000 / steps  # CPU time: less at the mercy of a shared machine
                seconds *= 1000 / steps
                times[name][count]["wall"].append(seconds)
                times[name][count]["cpu"].append(cpu)
                print(f"timing rep {rep} {name} n={count}: {seconds:.1f}s wall, {cpu:.1f}s cpu", flush=True)
    return times


# -- one seed ---------------------------------------------------------------------------------------
def one_seed(seed: int, args, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"integrity-{seed}-"))
    base = ["trainer.enable_progress_bar=false", f"seed={seed}", f"cache_dir={ROOT / '.cache'}", *overrides]
    cfg = compose_config(base, out)
    ctx = make_context(cfg, out)
    host, host_info = ctx.train_classifier(cfg.model, seed, "host")
    host = host.eval()
    result = {"seed": seed, "host_clean_acc": host_info["clean_acc"], "host_train_seconds": host_info.get("train_seconds"),
              "keys": {}, "benign": {}, "attacks": [], "run_dir": str(out)}
    keys, methods = {}, {}
    for name in args.methods + args.variants:
        config, extra = VARIANTS.get(name, (name, []))
        mcfg = compose_config(base + [f"method={config}", f"method.n_pairs={args.pairs}", *extra], out).method
        method = instantiate(mcfg)
        start = time.perf_counter()
        key = method.keygen(host, ctx, [], seed, KeySecret.from_text(f"integrity-{seed}-{name}"))
        gen = key.report["generation"]
        result["keys"][name] = {"keygen_seconds": time.perf_counter() - start, "generation": gen,
                                "benign": key.report["benign"], "decision": public_decision(key.decision)}
        print(f"seed {seed} {name}: key in {time.perf_counter() - start:.1f}s, median top-1 gap {gen['top_gap_median']:.2e}",
              flush=True)
        keys[name] = key
        if name not in VARIANTS:
            methods[name] = method
    g = torch.Generator().manual_seed(10_000 + seed)
    xt, _ = ctx.datamodule.test_set.tensors()
    xv = xt[torch.randperm(len(xt), generator=g)[: 2 * args.pairs]]
    valid = {"x": xv, "labels": predict_labels(host, xv)}
    # benign handling: false alarms
    for name, (suspect, calibrated) in benign_suspects(host, ctx.datamodule.input_shape, out / "benign").items():
        scores = score(keys, valid, suspect)
        result["benign"][name] = {"calibration_setting": calibrated, **{m: s["changed"] for m, s in scores.items()}}
    print(f"seed {seed} benign false alarms: "
          f"{sum(v[m] > 0 for v in result['benign'].values() for m in keys)} of {len(result['benign']) * len(keys)}", flush=True)
    # tampering
    for attack, strength, suspect, info in tampered(host, ctx, overrides + [f"cache_dir={ROOT / '.cache'}"], seed, out,
                                                    args.one_weight_picks):
        row = {"attack": attack, "strength": float(strength), "info": info, "clean_acc": acc(suspect, ctx)}
        row["scores"] = score(keys, valid, suspect)
        result["attacks"].append(row)
        print(f"seed {seed} {attack}@{strength:g}: " + ", ".join(
            f"{m} {s['pair_rate']:.2f}/{s['sample_rate']:.2f}" for m, s in row["scores"].items()), flush=True)
    if seed in args.timing_seeds and args.timing_reps > 0:
        timed_host = frozen(copy.deepcopy(host))  # as keygen runs it: no weight gradients
        result["stage1_seconds"] = stage1_times(methods, timed_host, ctx, args.timing_counts, args.timing_reps, args.timing_steps)
        result["stage1_timing"] = {"measured_steps": args.timing_steps, "scaled_to": 1000, "reps": args.timing_reps}
    return result


def timing_run(seed: int, args, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"integrity-timing-{seed}-"))
    base = ["trainer.enable_progress_bar=false", f"seed={seed}", f"cache_dir={ROOT / '.cache'}", *overrides]
    ctx = make_context(compose_config(base, out), out)
    host = frozen(ctx.train_classifier(ctx.model_cfg, seed, "host")[0])
    methods = {m: instantiate(compose_config(base + [f"method={m}"], out).method) for m in args.methods}
    return {"seed": seed, "stage1_seconds": stage1_times(methods, host, ctx, args.timing_counts, args.timing_reps,
                                                          args.timing_steps),
            "stage1_timing": {"measured_steps": args.timing_steps, "scaled_to": 1000, "reps": args.timing_reps}}


def acc(suspect, ctx) -> float:
    x, y = ctx.datamodule.test_set.tensors()
    return float((suspect.labels(x) == y).float().mean())


# -- aggregation ------------------------------------------------------------------------------------
def aggregate_timing(seeds: list[dict]) -> dict:
    """{method: {count: {"wall": stats, "cpu": stats}}} (stats with the median) over every rep of every seed."""
    timing: dict = {}
    for res in seeds:
        for m, by_c in res.get("stage1_seconds", {}).items():
            for c, secs in by_c.items():
                secs = secs if isinstance(secs, dict) else {"wall": secs}
                for kind, values in secs.items():
                    timing.setdefault(m, {}).setdefault(str(c), {}).setdefault(kind, []).extend(values)
    return {m: {c: {k: spread(v) | {"median": statistics.median(v)} for k, v in kinds.items()} for c, kinds in by_c.items()}
            for m, by_c in timing.items()}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(seeds: list[dict]) -> dict:
    table: dict = {}
    for res in seeds:
        for row in res["attacks"]:
            for method, s in row["scores"].items():
                cell = table.setdefault(row["attack"], {}).setdefault(f"{row['strength']:g}", {}).setdefault(method, {})
                for k in ("sample_rate", "pair_rate", "detected"):
                    cell.setdefault(k, []).append(float(s[k]))
    out = {a: {st: {m: {k: spread(v) for k, v in c.items()} for m, c in by_m.items()} for st, by_m in by_s.items()}
           for a, by_s in table.items()}
    benign = {}
    for res in seeds:
        for name, row in res["benign"].items():
            for m, changed in row.items():
                if m != "calibration_setting":
                    benign.setdefault(m, {"false_alarms": 0, "checks": 0, "held_out_checks": 0, "held_out_false_alarms": 0})
                    b = benign[m]
                    b["checks"] += 1
                    b["false_alarms"] += int(changed > 0)
                    if not row["calibration_setting"]:
                        b["held_out_checks"] += 1
                        b["held_out_false_alarms"] += int(changed > 0)
    timing = aggregate_timing(seeds)
    keygen = {}
    for res in seeds:
        for m, k in res["keys"].items():
            keygen.setdefault(m, {}).setdefault("keygen_seconds", []).append(k["keygen_seconds"])
            keygen[m].setdefault("top_gap_median", []).append(k["generation"]["top_gap_median"])
            keygen[m].setdefault("floor", []).append(k["benign"]["floor"])
    keygen = {m: {k: spread(v) for k, v in d.items()} for m, d in keygen.items()}
    return {"detection": out, "benign": benign, "stage1_seconds": timing, "keygen": keygen}


# -- figure -----------------------------------------------------------------------------------------
def figure(path: Path = RESULTS / "integrity_finetune_lr.png") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(RESULTS.glob("integrity_*.json"))
    panels = []
    for f in files:
        d = json.loads(f.read_text())
        if "aggregate" in d and "finetune_lr" in d["aggregate"]["detection"]:
            panels.append((d["label"], d["aggregate"]["detection"]["finetune_lr"]))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.6), squeeze=False)
    colors = dict(zip(METHODS + list(VARIANTS) + ["validset"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (label, table) in zip(axes[0], panels):
        lrs = sorted(table, key=float)
        xs = [float(lr) for lr in lrs]
        for method in table[lrs[0]]:
            color = colors.get(method)
            for metric, style in (("pair_rate", "-"), ("sample_rate", ":")):
                mean = [table[lr][method][metric]["mean"] for lr in lrs]
                ax.plot(xs, mean, style, color=color, marker="o" if metric == "pair_rate" else None, markersize=4,
                        label=method if metric == "pair_rate" else None)
                if metric == "pair_rate":
                    ax.fill_between(xs, [table[lr][method][metric]["min"] for lr in lrs],
                                    [table[lr][method][metric]["max"] for lr in lrs], color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("fine-tuning learning rate (Adam, 1 epoch, BatchNorm frozen)")
        ax.set_ylabel("detection rate")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Share of 150 pairs with a changed label (solid, band: min-max over seeds)\n"
                 "and of the 300 samples (dotted), after fine-tuning the host", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fmt(cell: dict | None, key: str) -> str:
    if not cell:
        return "-"
    c = cell[key]
    text = f"{100 * c['mean']:.1f}"
    return text + (f" ({100 * c['min']:.0f}-{100 * c['max']:.0f})" if c["max"] - c["min"] >= 0.005 else "")


def timing_lines(timing: dict, source: str) -> list[str]:
    if not timing:
        return []
    lines = ["", f"Stage-1 seconds per 1,000 iterations (median of reps; ratio to DBI's median), from {source}:", ""]
    dbi = timing.get("fragile_dbi", {})

    def by_kind(t: dict) -> dict:  # files written before CPU time was measured hold wall-clock seconds alone
        return t if not t or "wall" in t else {"wall": t}

    for m, by_c in timing.items():
        parts = []
        for c, kinds in by_c.items():
            for kind, v in by_kind(kinds).items():
                ref = by_kind(dbi.get(c) or {})  # a file without DBI's timing (e.g. the baselines alone) gives no ratio
                ratio = f" = {v['median'] / ref[kind]['median']:.3f}x DBI" if kind in ref else ""
                parts.append(f"n={c} {kind} {v['median']:.1f} s (min {v['min']:.1f}, max {v['max']:.1f}){ratio}")
        lines.append(f"- {m}: " + "; ".join(parts))
    return lines


def tables(path: Path = RESULTS / "integrity_tables.md") -> Path:
    """Markdown tables from every integrity_*.json: detection per sample / per pair (%, mean and min-max
    over seeds), detected verdicts, benign false alarms, stage-1 time."""
    lines = ["# Integrity benchmark (benchmarks/integrity.py)", "",
             "Cells: per-sample / per-pair detection rate in % (mean over seeds, min-max in brackets); 'verdict' = "
             "share of seeds whose key read tampered. `fragile_raw`: the seed's pairs without our benign floor.", ""]
    for f in sorted(RESULTS.glob("integrity_*.json")):
        d = json.loads(f.read_text())
        if "aggregate" not in d:  # a timing-only file, read next to its benchmark file
            continue
        agg, label = d["aggregate"], d["label"]
        det = agg["detection"]
        methods = [m for m in next(iter(next(iter(det.values())).values()))]
        lines += [f"## {label} ({len(d['seeds'])} seeds; `{d['command']}`)", ""]
        lines += ["| attack | strength | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for attack in ("backdoor", "finetune_lr", "finetune_lr_bn_train", "prune", "int8", "one_weight"):
            for strength in sorted(det.get(attack, {}), key=float):
                row = det[attack][strength]
                cells = [f"{fmt(row.get(m), 'sample_rate')} / {fmt(row.get(m), 'pair_rate')}; verdict "
                         f"{100 * row[m]['detected']['mean']:.0f}" if m in row else "-" for m in methods]
                lines.append(f"| {attack} | {strength} | " + " | ".join(cells) + " |")
        lines += ["", "Benign handling, keys read tampered (false alarms) / checks (calibration + held-out settings):", ""]
        for m, b in agg["benign"].items():
            lines.append(f"- {m}: {b['false_alarms']} / {b['checks']} (held-out settings: {b['held_out_false_alarms']} / "
                         f"{b['held_out_checks']})")
        timing_file = f.with_name(f.name.replace("integrity_", "integrity_timing_"))
        timing = json.loads(timing_file.read_text())["timing"] if timing_file.exists() else agg["stage1_seconds"]
        lines += timing_lines(timing, timing_file.name if timing_file.exists() else f.name)
        lines += ["", "Key generation (whole keygen, seconds; median top-1 gap of the kept samples; benign floor):", ""]
        for m, k in agg["keygen"].items():
            lines.append(f"- {m}: {k['keygen_seconds']['mean']:.0f} s, gap {k['top_gap_median']['mean']:.2e}, "
                         f"floor {k['floor']['mean']:.2e}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--timing-reps", type=int, default=3)
    parser.add_argument("--timing-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--timing-counts", type=int, nargs="+", default=[150, 300])
    parser.add_argument("--timing-steps", type=int, default=200, help="iterations measured per rep (scaled to 1,000)")
    parser.add_argument("--one-weight-picks", type=int, default=20)
    parser.add_argument("--timing-only", action="store_true", help="only Table V: integrity_timing_<data>_<model>.json")
    parser.add_argument("--tag", default="")
    parser.add_argument("--figure-only", action="store_true", help="redraw the figure and tables from the JSON files")
    parser.add_argument("--reuse", action="store_true", help="keep the seeds already in the result file; run only the others")
    args, overrides = parser.parse_known_args()
    if args.figure_only:
        print(figure(), tables())
        return
    torch.set_num_threads(1)
    cfg = compose_config(overrides, tempfile.mkdtemp())
    data, model = cfg.data._target_.rsplit(".", 1)[1].replace("DataModule", "").lower(), cfg.model._target_.rsplit(".", 1)[1]
    label = f"{data}, {model}" + (f" (width {cfg.model.width})" if "width" in cfg.model else "")
    name = f"integrity_{data}_{model.lower()}{'_' + args.tag if args.tag else ''}.json"
    if args.timing_only:
        runs = [timing_run(seed, args, overrides) for seed in args.timing_seeds]
        target = RESULTS / name.replace("integrity_", "integrity_timing_")
        save_json({"label": label, "command": "python benchmarks/integrity.py --timing-only " + " ".join(
            [f"--timing-seeds {' '.join(map(str, args.timing_seeds))}", f"--timing-reps {args.timing_reps}",
             f"--timing-steps {args.timing_steps}", f"--timing-counts {' '.join(map(str, args.timing_counts))}", *overrides]),
            "runs": runs, "timing": aggregate_timing(runs)}, target)
        print(f"wrote {target}; tables {tables()}")
        return
    seeds = []
    if args.reuse and (RESULTS / name).exists():
        seeds = [s for s in json.loads((RESULTS / name).read_text())["seeds"] if s["seed"] in args.seeds]
        print(f"reusing seeds {[s['seed'] for s in seeds]} from {RESULTS / name}", flush=True)
    for seed in args.seeds:
        if any(s["seed"] == seed for s in seeds):
            continue
        seeds.append(one_seed(seed, args, overrides))
        save_json({"label": label, "command": "python benchmarks/integrity.py " + " ".join(
            [f"--seeds {' '.join(map(str, args.seeds))}", f"--pairs {args.pairs}", f"--methods {' '.join(args.methods)}",
             f"--variants {' '.join(args.variants)}", f"--timing-steps {args.timing_steps}", *overrides]),
            "seeds": seeds, "aggregate": aggregate(seeds)}, RESULTS / name)
    print(f"wrote {RESULTS / name}; figure {figure()}; tables {tables()}")


if __name__ == "__main__":
    main()
