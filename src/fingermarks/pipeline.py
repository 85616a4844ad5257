"""The chain a run follows: host -> key -> per-user embedding -> distributed models -> verification.

`train.py` composes the config and calls `run`; each arrow is one function here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from fingermarks.attacks.base import choose_victims, make_attack
from fingermarks import quiet
from fingermarks.cache import cache_path, made_once
from fingermarks.context import RunContext
from fingermarks.evaluation.robustness import log_curves_wandb, robustness_curve, write_rows_csv
from fingermarks.errors import ConfigError, KeyFileError
from fingermarks.evaluation.uniqueness import uniqueness
from fingermarks.files import save_json, write_csv
from fingermarks.distributed import is_rank_zero, rank_zero_first
from fingermarks.key import Key, check_host, key_fingerprint, load_key, save_key
from fingermarks.secret import KeySecret
from fingermarks.loggers import finish, logger_factory
from fingermarks.methods.base import WatermarkMethod
from fingermarks.model_io import export_onnx, read_model_file, save_model
from fingermarks.suspects import open_suspect
from fingermarks.training.fit import load_classifier
from fingermarks.verification import Report, verify_suspect

log = logging.getLogger(__name__)

HOST_SEED_NOTE = "the host is trained with `seed`; reference, null and evaluation models use seeds far from it"


def user_names(users: Any) -> list[str]:
    """`users=4` -> user1..user4; `users=[alice,bob]` -> those names."""
    if isinstance(users, int):
        if users < 0:
            raise ConfigError(f"users must be >= 0, got {users}")
        return [f"user{u + 1}" for u in range(users)]
    if isinstance(users, (list, tuple, ListConfig)):
        names = [str(u) for u in users]
        if len(set(names)) != len(names):
            raise ConfigError(f"user names must be unique: {names}")
        return names
    raise ConfigError(f"users must be a count or a list of names, got {users!r}")


def select_users(registered: list[str], embed_users: Any = None, shard: Any = None) -> list[str]:
    """Which registered users this job embeds: all (None), a slice `"a:b"` of the registry, a list
    of names, and/or `shard="i/N"`: the i-th of N contiguous blocks (what is left after `embed_users`),
    so the N jobs of a sweep over shards embed disjoint users from one key."""
    chosen = list(registered)
    if embed_users is not None:
        if isinstance(embed_users, str) and ":" in embed_users:
            try:
                a, b = (int(x) if x.strip() else None for x in embed_users.split(":"))
            except ValueError:
                raise ConfigError(f"embed_users={embed_users!r}: a slice is 'start:stop' of registry positions") from None
            chosen = chosen[a:b]
        elif isinstance(embed_users, (list, tuple, ListConfig)):
            missing = [str(u) for u in embed_users if str(u) not in registered]
            if missing:
                raise ConfigError(f"embed_users: not registered in the key: {missing[:5]}")
            chosen = [str(u) for u in embed_users]
        else:
            raise ConfigError(f"embed_users must be a slice 'a:b', a list of names or null, got {embed_users!r}")
    if shard is not None:
        try:
            i, n = (int(x) for x in str(shard).split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise ConfigError(f"shard={shard!r}: expected 'i/N' with 0 <= i < N") from None
        size, extra = divmod(len(chosen), n)
        first = i * size + min(i, extra)
        chosen = chosen[first: first + size + (i < extra)]
    return chosen


def make_context(cfg: DictConfig, output_dir: Path) -> RunContext:
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return RunContext(
        datamodule=datamodule, data_cfg=cfg.data, model_cfg=cfg.model, recipe=cfg.host.recipe,
        trainer_factory=instantiate(cfg.trainer), output_dir=output_dir,
        cache_dir=Path(cfg.cache_dir) if cfg.get("cache_dir") else None,
        logger_factory=logger_factory(cfg.get("logger"), cfg),  # wandb: the job's one run, carrying cfg
    )


def obtain_host(cfg: DictConfig, ctx: RunContext) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The host model: a given file (checked against the data), else trained once and cached."""
    target = ctx.output_dir / "host.ckpt"
    if cfg.host.ckpt:
        model = load_classifier(cfg.host.ckpt, ctx.datamodule)
        info = dict(read_model_file(cfg.host.ckpt)["meta"], source=str(cfg.host.ckpt))
        save_model(model, target, info)
        return model, info
    model, info = ctx.train_classifier(cfg.model, int(cfg.seed), "host")
    save_model(model, target, info)
    return model, info


def obtain_key(cfg: DictConfig, method: WatermarkMethod, host, ctx: RunContext, users: list[str]) -> Key:
    """The run's key.pt: made from a fresh secret (or `key_secret`, to reproduce a key on purpose),
    or an existing owner's key given as `key_file` (so a sweep attacks one and the same key).

    A key is never written to a shared cache. Under multi-process training only rank zero makes
    and writes it; the other ranks wait and read it.
    """
    path = ctx.output_dir / "key.pt"
    if path.exists() and not cfg.overwrite_key and is_rank_zero():
        raise KeyFileError(f"{path} exists; refusing to overwrite a key (set overwrite_key=true, or use another hydra.run.dir)")

    def make() -> Key:
        if cfg.get("key_file"):
            key = load_key(cfg.key_file)
            check_host(key, host)
            if key.method != method.name:
                raise KeyFileError(f"key_file {cfg.key_file} is a {key.method} key, but method={method.name}")
        else:
            start = time.perf_counter()
            secret = KeySecret.resolve(cfg.get("key_secret"))
            key = method.keygen(host, ctx, users if method.embeds else [], int(cfg.seed), secret=secret)
            key.report["keygen_seconds"] = time.perf_counter() - start
            key.config.update(method=OmegaConf.to_container(cfg.method, resolve=True), data=cfg.data._target_)
        save_key(key, path, overwrite=bool(cfg.overwrite_key))
        return key

    return rank_zero_first(path, make, load_key)


def embedding_recipe(method_cfg: DictConfig) -> dict[str, Any]:
    """What a user's cached model depends on beyond the key: the method's config less its `decision`.

    The decision settings (levels, reads, probes) only change how suspects are read and judged, and what
    of them keygen uses is in the key's fingerprint already: a sweep over them reuses the same user models.
    """
    return {name: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for name, value in method_cfg.items() if name != "decision"}


def distribute(cfg: DictConfig, method: WatermarkMethod, host, key: Key, users: list[str], ctx: RunContext):
    """Embed each of `users` and write users/<name>/model.ckpt and model.onnx (no key material inside),
    then users/<name>/embed.json (the embedding's record and the key's fingerprint; not for shipping).

    Resumable: a user whose three files are there for this key is skipped (its model read back), so a
    run cut short (or one shard of a sweep) continues where it stopped. A user model this key and
    embedding config made before is reused from the cache (so an attack sweep attacks one and the same
    watermarked model); parallel jobs that need the same one make it once (`cache.made_once`).
    Returns {user: info} and {user: model}.
    """
    infos, models = {}, {}
    shape = list(ctx.datamodule.input_shape)
    key_id = key_fingerprint(key)
    index = {name: i for i, name in enumerate(key.users)}
    start, embedded = time.perf_counter(), 0
    seed_of = {user: int(cfg.seed) * 1000 + index[user] + 1 for user in users}
    # embedding.stack_users > 1: the users still to embed go in groups of that many, one run each (embedding/stacked.py);
    # a group is embedded when its first user is made, and its other users taken from what it made
    stack = method.group_size(host)
    group_of = {}
    if stack > 1:
        todo = [user for user in users if _embedded_before(ctx.output_dir / "users" / user, key_id) is None]
        group_of = {user: todo[i - i % stack: i - i % stack + stack] for i, user in enumerate(todo)}
    made_with_group: dict[str, tuple] = {}
    for k, user in enumerate(users, 1):
        folder = ctx.output_dir / "users" / user
        done = _embedded_before(folder, key_id)
        if done is not None:
            infos[user], models[user] = done, load_classifier(folder / "model.ckpt", ctx.datamodule)
            quiet.step(f"{user}: embedded before (users/{user}), skipped", "users", k, len(users))
            continue
        seed = seed_of[user]
        cached = _user_cache(cfg, ctx, key, key_id, user, seed)

        def make(user=user, seed=seed, cached=cached):
            if user in group_of:
                if user not in made_with_group:
                    # the group's users not in the cache (another job may have made some)
                    group = [u for u in group_of[user]
                             if u == user or not _is_file(_user_cache(cfg, ctx, key, key_id, u, seed_of[u]))]
                    made = method.embed_group(host, key, group, ctx, seeds=[seed_of[u] for u in group])
                    made_with_group.update(zip(group, made))
                model, info = made_with_group.pop(user)
            else:
                model, info = method.embed(host, key, user, ctx, seed=seed)
            if cached is not None and is_rank_zero():
                save_model(model, cached, info)
            return model, info

        def load(path):
            return load_classifier(path, ctx.datamodule), dict(read_model_file(path)["meta"], cached=True)

        (model, info), from_cache = made_once(cached, load, make, what=user)
        if is_rank_zero():  # every rank trained the same model; one writes it
            save_model(model, folder / "model.ckpt", {"clean_acc": info["clean_acc"]})
            export_onnx(model, folder / "model.onnx", shape)
            save_json(dict(info, key=key_id), folder / "embed.json")  # last: it marks the user done
        infos[user], models[user] = info, model
        embedded += 1
        left = len(users) - k
        eta = f", about {(time.perf_counter() - start) / embedded * left:.0f}s left" if left and not from_cache else ""
        group = len(info.get("embed_group") or [])
        how = ("from the cache" if from_cache else f"embedded in {info['embed_seconds']:.1f}s, {info['embed_epochs']} epochs"
               + (f" (a group of {group} in {info['group_seconds']:.1f}s)" if group > 1 else ""))
        quiet.step(f"{user}: {how}, test acc {info['clean_acc']:.4f}{eta}", "users", k, len(users))
    return infos, models


def _user_cache(cfg: DictConfig, ctx: RunContext, key: Key, key_id: str, user: str, seed: int) -> Path | None:
    """Where user `user`'s model of this key and embedding config is cached (None without a cache)."""
    recipe = {"key": key_id, "user": user, "bits": key.users[user].tolist(), "seed": seed, "method": embedding_recipe(cfg.method)}
    return cache_path(ctx.cache_dir, "users", recipe)


def _is_file(path: Path | None) -> bool:
    return path is not None and Path(path).is_file()


def _embedded_before(folder: Path, key_id: str) -> dict[str, Any] | None:
    """The record of a user this key embedded in `folder` before (all files there), else None."""
    record = folder / "embed.json"
    if not (record.is_file() and (folder / "model.ckpt").is_file() and (folder / "model.onnx").is_file()):
        return None
    import json

    info = json.loads(record.read_text())
    if info.pop("key", None) != key_id:
        log.warning("%s was embedded for another key; embedding it again", folder)
        return None
    return dict(info, resumed=True)


def attack_stage(cfg: DictConfig, key: Key, host, models: dict[str, Any], victims: list[str], ctx: RunContext) -> list[dict[str, Any]]:
    """Attack the victims (the users' distributed models, in `victims` order: one, or the colluders;
    none for a fingerprint, whose victim is the host) along the attack's strength axis, with the
    attacker's own data (the attacker split, checked against the key's trigger sources); verify at
    every point; write robustness.csv (and wandb curves)."""
    attack = make_attack(cfg.attack)
    data = attack.attacker_data(ctx.datamodule, key.report.get("source_indices", []), seed=int(cfg.seed))
    log.info("attacker: %d of the %d images of the attacker split", len(data.train), data.split_size)
    if victims:
        victim_models, users = [models[u] for u in victims], list(victims)
    else:  # a fingerprint: every copy is the host
        victim_models, users = [host] * attack.victims, [None] * attack.victims
    rows = robustness_curve(attack, victim_models, key, users, ctx, data, host=host)
    write_rows_csv(rows, ctx.output_dir / "robustness.csv")
    log_curves_wandb(rows, ctx.logger_factory(f"robustness_{attack.name}"))
    return rows


def verify_all(key: Key, ctx: RunContext, users: list[str]) -> tuple[dict[str, Report], float]:
    """Verify every user's ONNX model (the file an edge device runs) and the host itself.

    Returns the reports and the mean seconds one verification took (load + n queries + decision).
    """
    suspects = {u: (ctx.output_dir / "users" / u / "model.onnx", u) for u in users}
    suspects["host"] = (ctx.output_dir / "host.ckpt", None)
    reports, start = {}, time.perf_counter()
    for name, (path, expected) in suspects.items():
        reports[name] = verify_suspect(key, open_suspect(path), expected_user=expected)
    return reports, (time.perf_counter() - start) / len(suspects)


def verdict_word(rep: Report) -> str:
    """The verdict column in the words of the question the key answers."""
    if rep.question == "integrity":
        return "tampered" if rep.tampered else "intact"
    if rep.question == "piracy":
        return "copy" if rep.owned else "not-copy"
    return "owned" if rep.owned else "not-ours"


def summary_table(host_info: dict, embed: dict[str, dict], reports: dict[str, Report]) -> str:
    # x_host: embedding time over the host's training time (as measured when the host was trained)
    host_s = host_info.get("train_seconds") or 0.0
    rows = [f"{'model':<10} {'clean_acc':>9} {'acc_drop':>8} {'embed_s':>8} {'x_host':>6} {'epochs':>6} {'match':>6} {'bit_acc':>7} {'verdict':>8} {'traced':>8} {'ham':>4} {'margin':>6}"]
    for name, rep in reports.items():
        info = embed.get(name, {})
        acc = info.get("clean_acc", host_info["clean_acc"])
        drop = 100 * (host_info["clean_acc"] - acc)
        x_host = f"{info['embed_seconds'] / host_s:.2f}" if host_s and "embed_seconds" in info else ""
        rows.append(
            f"{name:<10} {acc:>9.4f} {drop:>8.2f} {info.get('embed_seconds', 0):>8.1f} "
            f"{x_host:>6} {info.get('embed_epochs', 0):>6} "
            f"{rep.match_rate:>6.3f} {'' if rep.bit_acc is None else f'{rep.bit_acc:.3f}':>7} {verdict_word(rep):>8} "
            f"{str(rep.traced_user):>8} {'' if rep.hamming is None else rep.hamming:>4} {'' if rep.margin is None else rep.margin:>6}"
        )
    if host_info.get("cached") and embed:  # the host's seconds come from the run that trained it, maybe under another load
        rows.append(f"x_host divides by the cached host's training time as recorded when it was trained "
                    f"({host_s:.1f}s), not on this run's load")
    return "\n".join(rows)


def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run the configured chain in `output_dir` and return (and write) its summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    quiet.configure(cfg.get("verbose", False), cfg)  # what the run prints (verbose=true: every banner)
    users = user_names(cfg.users)
    ctx = make_context(cfg, output_dir)
    method: WatermarkMethod = instantiate(cfg.method)
    host, host_info = obtain_host(cfg, ctx)
    key = obtain_key(cfg, method, host, ctx, users)
    # an attack run needs only the attacked users' models (attack_user, then the next registered ones
    # for a collusion of several); the others stay registered in the key
    victims = (choose_victims(list(key.users), cfg.attack_user, make_attack(cfg.attack).victims)
               if cfg.get("attack") and key.users and method.embeds else [])
    to_embed = (victims if cfg.get("attack") else select_users(list(key.users), cfg.get("embed_users"), cfg.get("shard"))
                ) if method.embeds else []
    gen = key.report.get("generation", {})
    made = f"from {cfg.key_file}" if cfg.get("key_file") else f"made in {key.report.get('keygen_seconds') or 0:.1f}s"
    quiet.step(f"{key.n} triggers ({gen.get('reached', '?')} of {gen.get('candidates', '?')} candidates), "
               f"{len(key.users)} registered users, {made}; this job embeds {len(to_embed)}", "key")
    embed, models = distribute(cfg, method, host, key, to_embed, ctx)
    if not is_rank_zero():  # the other ranks only took part in training
        return {}
    reports, verify_seconds = verify_all(key, ctx, to_embed)
    quiet.step(f"{len(reports)} models ({len(to_embed)} users and the host), {verify_seconds:.2f}s each", "verification")
    robustness = attack_stage(cfg, key, host, models, victims, ctx) if cfg.get("attack") else None
    unique = uniqueness(key, ctx, cfg.uniqueness, int(cfg.seed)) if cfg.uniqueness.enabled else None
    if unique is not None:
        write_csv(unique["rows"], output_dir / "uniqueness.csv")
    summary = {
        "method": key.method,
        "data": ctx.datamodule.name,
        "host": {k: host_info.get(k) for k in ("clean_acc", "train_seconds", "epochs", "seed", "cached")},
        "key": {"n_triggers": key.n, "min_distance": key.min_distance, "decision": public_decision(key.decision),
                "keygen_seconds": key.report.get("keygen_seconds"), "generation": key.report.get("generation")},
        "verify_seconds": verify_seconds,
        "users": {u: {"clean_acc": i["clean_acc"], "acc_drop": 100 * (host_info["clean_acc"] - i["clean_acc"]),
                      "embed_seconds": i["embed_seconds"], "embed_epochs": i["embed_epochs"], "history": i["history"],
                      "embed_to_host_time": i["embed_seconds"] / host_info["train_seconds"] if host_info.get("train_seconds") else None,
                      "all_matched": i.get("all_matched", True), "matched": i.get("matched"), "stopped": i.get("stopped")}
                  for u, i in embed.items()},
        "verification": {name: rep.to_dict() for name, rep in reports.items()},
        "uniqueness": unique,
        "robustness": robustness,
        "trained": ctx.trained,
    }
    save_json(summary, output_dir / "summary.json")
    finish(summary)  # the job's wandb run ends with the summary's numbers
    print(f"key: {key.method}, {key.n} triggers ({gen.get('reached', '?')} of {gen.get('candidates', '?')} candidates reached "
          f"the margin in {gen.get('seconds', 0):.1f}s); decision rule '{key.decision['rule']}' at alpha "
          f"{key.decision['alpha']:g}; ID min distance {key.min_distance}")
    shown = reports if len(reports) <= 21 else {n: r for i, (n, r) in enumerate(reports.items()) if i < 10 or n == "host"}
    print(summary_table(host_info, embed, shown))
    if len(shown) < len(reports):  # thousands of users: the table's head, the rest in summary.json
        rest = [u for u in to_embed if u not in shown]
        print(f"... and {len(rest)} more users (summary.json): mean acc_drop "
              f"{sum(summary['users'][u]['acc_drop'] for u in rest) / len(rest):.2f}, traced correctly "
              f"{sum(reports[u].traced_user == u for u in rest)}/{len(rest)}")
    partial = [u for u, i in embed.items() if not i.get("all_matched", True)]
    if partial:  # only with method.embedding.allow_partial=true; otherwise the embedding raised
        print("WARNING: shipped with unmatched triggers (allow_partial): "
              + ", ".join(f"{u} {embed[u].get('matched')}/{key.n}" for u in partial))
    if unique is not None:
        lo, hi = unique["false_positive_ci95"]
        print(f"independent models: {len(unique['rows'])}, owned {unique['owned']} (false-positive rate 95 % CI "
              f"{lo:.3f}-{hi:.3f}), match rate mean {unique['mean_match_rate']:.3f} max {unique['max_match_rate']:.3f}, "
              f"smallest p-value {unique['min_p_value']:.2e}")
    print(f"run directory: {output_dir}")
    return summary


def public_decision(decision: Any) -> Any:
    """The key's decision without its tensors (probe images, reference outputs, encoder weights): those are
    key material, and a run summary is meant to be read and shared."""
    if isinstance(decision, torch.Tensor):
        return None
    if isinstance(decision, dict):
        return {k: public_decision(v) for k, v in decision.items() if not isinstance(v, torch.Tensor)}
    if isinstance(decision, (list, tuple)):
        return [public_decision(v) for v in decision]
    return decision
