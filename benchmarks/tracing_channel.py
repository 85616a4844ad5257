"""The tracing channel: where each trigger's label goes under each attack, and which decoder recovers the user.

    python benchmarks/tracing_channel.py --tag <name> [--seeds 0] [--embed 4] [--registry 100]
        [--attacks ftal rtal ...] [--attack-overrides attack.strengths=[0.1,0.3] ...] [hydra overrides ...]

Per seed: the host (cached), a key from the passphrase `channel-<seed>` with `--registry` registered
users, `--embed` of them embedded (cached), and every attack of `--attacks` along its whole strength
axis against each embedded user. For every attacked model the top-1 labels on the triggers are kept,
so decoders can be compared offline on the same answers (`analyse`): transitions per trigger
(kept / j->i / i->j / other) and the verdict of the code rule under several direction weights. A row also
counts the attacked models that stay usable (clean accuracy at most ACC_TOLERANCE points below the user's
copy) and, of those, the ones no guilty user was traced in: the thief's successes (DESIGN's yardstick); and the
embedded users' accuracy drops against the host.
Writes benchmarks/results/tracing_channel_<tag>.jsonl (one line per attacked model) and a summary
JSON; `--analyse-only` re-reads the JSONL (`--trace-alpha 1e-4`: decided at another accusation level;
`--reads 5`: from the first 5 reads of suspects that were read several times, see verification.query_suspect).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from compose import ROOT, compose_config
from fingermarks.attacks.base import choose_victims, make_attack
from fingermarks.evaluation.collect import ACC_TOLERANCE
from fingermarks.evaluation.robustness import deployed_accuracy
from fingermarks.evidence.rules import BALANCED, CodeRule
from fingermarks.files import save_json
from fingermarks.key import host_fingerprint, load_key
from fingermarks.metrics import accuracy
from fingermarks.pipeline import distribute, make_context, obtain_host, obtain_key, user_names
from fingermarks.suspects import ModuleSuspect
from fingermarks.verification import query_suspect

RESULTS = ROOT / "benchmarks" / "results"
# decoders compared offline: the code rule under each list of weightings, (j-reads, i-reads) or `balanced`
# (read off each suspect's own j / i reads, evidence.rules); a list of several is a union bound over them
WEIGHTS = {"equal": [(1.0, 1.0)], "j2": [(1.0, 0.5)], "j4": [(1.0, 0.25)], "j_only": [(1.0, 0.0)], "i_only": [(0.0, 1.0)],
           "i4": [(0.25, 1.0)], "equal+j4": [(1.0, 1.0), (1.0, 0.25)], "equal+j4+i4": [(1.0, 1.0), (1.0, 0.25), (0.25, 1.0)],
           "balanced": [BALANCED], "equal+balanced": [(1.0, 1.0), BALANCED]}
#: per-row counts (not means): innocents named, usable attacked models, usable ones no user was traced in
COUNTS = ("innocent", "usable", "escaped")
DEFAULT_WEIGHTS = "balanced"  # conf/method/fingermarks.yaml (before: "equal+j4")


def collect(tag: str, seed: int, n_embed: int, registry: int, attacks: list[str], overrides: list[str],
            attack_overrides: list[str] = ()) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix=f"channel-{tag}-{seed}-"))
    base = ["trainer.enable_progress_bar=false", f"seed={seed}", f"key_secret=channel-{seed}", f"users={registry}",
            f"cache_dir={ROOT / '.cache'}", *overrides]
    cfg = compose_config(base, out)
    ctx = make_context(cfg, out)
    method = instantiate(cfg.method)
    host, _ = obtain_host(cfg, ctx)
    key = obtain_key(cfg, method, host, ctx, user_names(cfg.users))
    embedded = list(key.users)[:n_embed]
    infos, models = distribute(cfg, method, host, key, embedded, ctx)
    host_acc = accuracy(host, ctx.datamodule.test_set)  # each user's accuracy drop is read against it (`embedding_drops`)
    lines = []
    for name in attacks:
        acfg = compose_config(base + [f"attack={name}", *attack_overrides], out)
        for user in embedded:
            attack = make_attack(acfg.attack)
            colluders = choose_victims(embedded, user, attack.victims)
            if len(colluders) > 1 and user != embedded[0]:
                continue  # one collusion trial per seed and size: the first users together
            data = attack.attacker_data(ctx.datamodule, key.report.get("source_indices", []), seed=seed)
            victim = [models[u] for u in colluders] if attack.victims > 1 else models[user]
            for strength, suspect in attack.run(victim, data, ctx):
                labels, _ = query_suspect(key, suspect)  # (n,), or (R, n) reads of a suspect that answers at random
                lines.append({"tag": tag, "seed": seed, "user": user, "colluders": colluders, "attack": attack.name,
                              "axis": attack.axis, "strength": strength, "default": strength == attack.default,
                              "clean_acc": deployed_accuracy(suspect, data.test), "labels": labels.tolist(),
                              "key": str(out / "key.pt"), "user_clean_acc": infos[user]["clean_acc"],
                              "host_clean_acc": host_acc})
    return lines


def with_noise_leans(key, seed: int, overrides: list[str], line_key: str = "key"):
    """The key with the host's leans under noise as today's keygen adds them (the stds and read count of the
    method config; the same secret-seeded draw), for re-deciding answers stored before keys held them."""
    if key.decision.get("noise_leans") is not None:
        return key
    out = Path(tempfile.mkdtemp(prefix=f"channel-leans-{seed}-"))
    cfg = compose_config(["trainer.enable_progress_bar=false", f"seed={seed}", f"cache_dir={ROOT / '.cache'}", *overrides], out)
    ctx = make_context(cfg, out)
    host, _ = obtain_host(cfg, ctx)
    if host_fingerprint(host) != key.host_sha256:
        raise SystemExit(f"{line_key}: the host of seed {seed} with {overrides} is not the key's host")
    key.decision |= instantiate(cfg.method).noise_lean_fields(host, key.triggers, key.pairs, ctx.datamodule.input_range,
                                                              key.secret_generator)
    return key


def embedding_drops(lines: list[dict]) -> dict | None:
    """The embedded users' accuracy drops (points, host's test accuracy less the user's copy's), one per seed and user;
    None for lines recorded before the host's accuracy was (2026-12-07)."""
    drops = {(line["seed"], line["user"]): 100 * (line["host_clean_acc"] - line["user_clean_acc"])
             for line in lines if "host_clean_acc" in line}
    if not drops:
        return None
    values = list(drops.values())
    return {"users": len(values), "acc_drop_mean": float(np.mean(values)), "acc_drop_min": float(min(values)),
            "acc_drop_max": float(max(values))}


def analyse(lines: list[dict], trace_alpha: float | None = None, reads: int | None = None,
            accuse_alpha: float | None = None, noise_leans_overrides: list[str] | None = None) -> dict:
    """Transitions and decoder verdicts per (attack, strength), summed over seeds and users
    (`trace_alpha`: the accusation level instead of the key's; `accuse_alpha`: the level for users beside the
    strongest accused one instead of the key's; `reads`: decide from the first `reads` reads
    of a suspect that was read several times; `noise_leans_overrides`: keys made without the host's noise
    leans get them, from the host of the run's config with these overrides). Transitions are counted on the
    first read."""
    keys = {}
    table = defaultdict(lambda: defaultdict(float))
    per_seed = defaultdict(lambda: defaultdict(int))
    for line in lines:
        if line["key"] not in keys:
            keys[line["key"]] = load_key(line["key"])
            if noise_leans_overrides is not None:
                keys[line["key"]] = with_noise_leans(keys[line["key"]], line["seed"], noise_leans_overrides, line["key"])
        key = keys[line["key"]]
        all_reads = torch.tensor(line["labels"])
        if all_reads.dim() == 2 and reads:  # the first `reads` reads of the triggers, and the probe reads as they are
            base, probe_reads = CodeRule(key.decision).split_reads(all_reads)
            all_reads = torch.cat([base[:reads], probe_reads])
        if all_reads.dim() == 2 and len(all_reads) == 1:
            all_reads = all_reads[0]
        labels = all_reads if all_reads.dim() == 1 else all_reads[0]
        target = key.target_labels(key.users[line["user"]])
        c = target == key.pairs[:, 1]  # the user carries j here
        reads_j, reads_i = labels == key.pairs[:, 1], labels == key.pairs[:, 0]
        row = table[(line["attack"], line["strength"])]
        row["models"] += 1
        row["clean_acc"] += line["clean_acc"]
        row["kept"] += float((labels == target).float().mean())
        row["j_to_i"] += float((c & reads_i).sum()) / max(int(c.sum()), 1)
        row["i_to_j"] += float((~c & reads_j).sum()) / max(int((~c).sum()), 1)
        row["to_other"] += float((~reads_i & ~reads_j).float().mean())
        # DESIGN's yardstick: a removal succeeds only where the thief keeps a usable model
        usable = 100 * (line["user_clean_acc"] - line["clean_acc"]) <= ACC_TOLERANCE
        row["usable"] += usable
        for wname, weightings in WEIGHTS.items():
            decision = dict(key.decision, weightings=[w if w == BALANCED else {"j": w[0], "i": w[1]} for w in weightings]) | (
                {"trace_alpha": trace_alpha} if trace_alpha else {}) | ({"accuse_alpha": accuse_alpha} if accuse_alpha else {})
            rep = CodeRule(decision).decide(key, all_reads, expected_user=line["user"])
            row[f"owned[{wname}]"] += rep.owned
            guilty = line.get("colluders") or [line["user"]]
            named = {rep.traced_user, *(rep.accused or [])} - {None}  # the margin rule's user and every accused one
            row[f"traced[{wname}]"] += bool(named & set(guilty))
            row[f"innocent[{wname}]"] += bool(named - set(guilty))
            row[f"escaped[{wname}]"] += usable and not named & set(guilty)
            if wname == DEFAULT_WEIGHTS:  # "in every seed": the default's traced count per seed
                per_seed[(line["attack"], line["strength"])][line["seed"]] += bool(named & set(guilty))
    summary = []
    for (attack, strength), row in sorted(table.items(), key=lambda kv: (kv[0][0], float(kv[0][1]))):
        m = row.pop("models")
        summary.append({"attack": attack, "strength": strength, "models": int(m)} | {
            k: (v / m if not k.startswith(COUNTS) else int(v)) for k, v in row.items()}
            | {f"traced_per_seed[{DEFAULT_WEIGHTS}]": {str(s): n for s, n in sorted(per_seed[(attack, strength)].items())}})
    return {"rows": summary, "embedding": embedding_drops(lines)}


def compare(tags: list[str]) -> str:
    """Markdown: traced share (equal weights; a colluder traced or accused) per attack and strength, one column per tag."""
    results = {t: {(r["attack"], str(r["strength"])): r for r in json.loads((RESULTS / f"tracing_channel_{t}.json").read_text())["rows"]}
               for t in tags}
    keys = list(results[tags[0]])
    lines = ["| attack | strength | " + " | ".join(f"{t}: clean acc, traced, owned" for t in tags) + " |",
             "|---|---|" + "---|" * len(tags)]
    for k in keys:
        cells = [f"{results[t][k]['clean_acc']:.3f}, {results[t][k]['traced[equal]']:.2f}, {results[t][k]['owned[equal]']:.2f}"
                 if k in results[t] else "-" for t in tags]
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(cells) + " |")
    innocent = [sum(r["innocent[equal]"] for r in results[t].values()) for t in tags]
    models = [sum(r["models"] for r in results[t].values()) for t in tags]
    lines.append("")
    lines.append("Innocent users named: " + ", ".join(f"{t} {i} of {m} attacked models" for t, i, m in zip(tags, innocent, models)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--embed", type=int, default=4)
    parser.add_argument("--registry", type=int, default=100)
    parser.add_argument("--attacks", nargs="+", default=["ftal", "rtal", "ftll", "adv_train", "input_noise", "prune", "quantize"])
    parser.add_argument("--attack-overrides", nargs="+", default=[], metavar="OVERRIDE",
                        help="overrides of the attack configs only, e.g. attack.strengths=[0.1,0.3] (applied to every attack)")
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--trace-alpha", type=float, help="re-decide at this accusation level (tracing_channel_<tag>_ta<level>.json)")
    parser.add_argument("--accuse-alpha", type=float, help="re-decide with this level for users accused beside the "
                        "strongest one (tracing_channel_<tag>_aa<level>.json)")
    parser.add_argument("--reads", type=int, help="re-decide from the first READS reads of suspects read several times "
                        "(tracing_channel_<tag>_r<reads>.json)")
    parser.add_argument("--noise-leans", action="store_true", help="re-decide keys made without the host's leans under "
                        "noise as if they held them (tracing_channel_<tag>_nl.json)")
    parser.add_argument("--compare", nargs="+", metavar="TAG", help="table of earlier tags side by side (tracing_channel_compare_<tags>.md)")
    args, overrides = parser.parse_known_args()
    if args.compare:
        text = compare(args.compare)
        (RESULTS / f"tracing_channel_compare_{'_'.join(args.compare)}.md").write_text(text + "\n")
        print(text)
        return
    overrides = [o for o in overrides if o != "--"]
    path = RESULTS / f"tracing_channel_{args.tag}.jsonl"
    if not args.analyse_only:
        with open(path, "a") as fh:
            for seed in args.seeds:
                for line in collect(args.tag, seed, args.embed, args.registry, args.attacks, overrides, args.attack_overrides):
                    fh.write(json.dumps(line) + "\n")
                fh.flush()  # a sweep stopped later keeps every finished seed
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    result = analyse(lines, args.trace_alpha, args.reads, args.accuse_alpha, overrides if args.noise_leans else None) | {
        "tag": args.tag, "overrides": overrides, "trace_alpha": args.trace_alpha, "reads": args.reads,
        "accuse_alpha": args.accuse_alpha, "noise_leans": args.noise_leans}
    suffix = ((f"_ta{args.trace_alpha:g}" if args.trace_alpha else "") + (f"_aa{args.accuse_alpha:g}" if args.accuse_alpha else "")
              + (f"_r{args.reads}" if args.reads else "") + ("_nl" if args.noise_leans else ""))
    save_json(result, RESULTS / f"tracing_channel_{args.tag}{suffix}.json")
    cols = (["attack", "strength", "clean_acc", "kept", "j_to_i", "i_to_j", "to_other"] + [f"traced[{w}]" for w in WEIGHTS]
            + [f"traced_per_seed[{DEFAULT_WEIGHTS}]"])
    print(" | ".join(cols))
    for r in result["rows"]:
        print(" | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    print(f"innocent users named ({DEFAULT_WEIGHTS}): {sum(r[f'innocent[{DEFAULT_WEIGHTS}]'] for r in result['rows'])} "
          f"in {sum(r['models'] for r in result['rows'])} attacked models")
    if result["embedding"]:
        e = result["embedding"]
        print(f"accuracy drop of the {e['users']} embedded users: mean {e['acc_drop_mean']:.2f} points "
              f"({e['acc_drop_min']:.1f} to {e['acc_drop_max']:.1f})")


if __name__ == "__main__":
    main()
