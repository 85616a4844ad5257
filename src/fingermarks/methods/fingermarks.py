"""FingerMarks: fingerprint-based triggers carrying a multi-bit user ID (the method of seeds/fingermarks.txt)."""

from __future__ import annotations

import copy
import functools
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fingermarks.context import RunContext
from fingermarks.errors import ConfigError, KeyGenError
from fingermarks.evidence.rules import RULES
from fingermarks.embedding import DynamicRatio, EmbeddingData, EmbeddingModule, stop_reason
from fingermarks.fingerprint import conferrable_penalty, fingermarks_loss, optimise_inputs, select_triggers, target_margin
from fingermarks.key import Key
from fingermarks.secret import KeySecret
from fingermarks.methods.base import WatermarkMethod, frozen, sample_sources, start_user_model
from fingermarks.metrics import accuracy, model_outputs, predict_labels
from fingermarks.training.layout import channels_last

# Seeds of the owner's reference models: far from the host's, the null models' and evaluation models'.
REFERENCE_SEED = 10_000


def probe_sets(datamodule, triggers: torch.Tensor, source_indices: list[int], scales: list[float]) -> dict[str, Any]:
    """The code rule's probe images: each trigger's perturbation from its source image, scaled by each of
    `scales`, clipped to the input range. Adversarial training teaches a model that perturbations as
    small as its budget keep an image's label, which sends most triggers back to their source label;
    the user's model was trained on the trigger itself, and a trigger pushed further along its own
    perturbation still lands on the side the user's model was taught (README "Adversarial training")."""
    x0, _ = datamodule.train_eval_set.tensors(torch.as_tensor(source_indices, dtype=torch.long))
    lo, hi = (float(v) for v in datamodule.input_range)
    delta = triggers - x0
    return {"probes": torch.stack([(x0 + s * delta).clamp(lo, hi) for s in scales]), "probe_scales": scales}


# embedding options that train parts of a head-only embedding's head (method.embedding.train=head)
HEAD_ONLY_OPTIONS = ("prune_copies", "prune_weights", "dormant_units")

# embedding options that only a user's own run trains (method.embedding.stack_users=1)
GROUP_UNSUPPORTED = ("dormant_units", "robust_eps", "anchor")

# Lightning precisions an embedding may train in: float32, or autocast to bfloat16 (CPU and GPU) or float16 (GPU)
EMBEDDING_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def noise_leans(host: nn.Module, triggers: torch.Tensor, pairs: torch.Tensor, stds: list[float], reads: int,
                input_range, generator: torch.Generator) -> dict[str, Any]:
    """The host's own lean on every trigger under Gaussian noise of each std: the share of `reads` noisy
    reads answering j minus the share answering i, (S, n). A deployment that adds noise sends each
    trigger back to i at a rate set by how far it sits from the boundary, the same for the host and every
    user's copy; the code rule fits a noisy suspect's leans on these and reads the ID in what is left
    (evidence.rules.ReadScores). They come from the host and the triggers alone, never from an ID."""
    lo, hi = (float(v) for v in input_range)
    leans = []
    for std in stds:
        # one read (n images) at a time: reads x n images of ImageNet size would not fit in memory at once
        labels = torch.stack([predict_labels(host, (triggers + std * torch.randn(triggers.shape, generator=generator,
                                                                                dtype=triggers.dtype)).clamp(lo, hi))
                              for _ in range(reads)])
        leans.append((labels == pairs[:, 1]).float().mean(0) - (labels == pairs[:, 0]).float().mean(0))
    return {"noise_leans": torch.stack(leans), "noise_lean_stds": [float(v) for v in stds]}


class FingerMarks(WatermarkMethod):
    """Keygen: n triggers, each a training image x (label i) moved so the host answers j
    (its least likely label) with margin k while i is pushed down; bit 0 -> i, bit 1 -> j.
    Embed: Algorithm 1 (dynamic ratio + DeepFool neighbours + growing clean fraction).

    `references`: architectures of independently trained models the owner uses to keep
    the triggers host-specific: their probability of answering i or j is penalised with
    weight `generation.conferrable` and candidates they still match are dropped first.
    `decision.null_models` further independent models (other seeds) estimate the chance
    match rate of an unrelated model, from which the ownership threshold is set.
    """

    name = "fingermarks"

    def __init__(self, n_triggers: int, generation: DictConfig, encoding: DictConfig, references: list, decision: DictConfig,
                 ids: DictConfig, embedding: DictConfig) -> None:
        self.n = n_triggers
        self.gen, self.encoding, self.decision, self.ids, self.emb = generation, encoding, decision, ids, embedding
        self.references = list(references)
        for field, allowed in (("target", ("least_likely", "random")), ("tiebreak", ("reference_prob", "distance"))):
            if generation[field] not in allowed:
                raise ConfigError(f"method.generation.{field}={generation[field]!r}: expected one of {', '.join(allowed)}")
        # head-only options and stacking apply where the head trains: `train: auto` leaves them out on a model
        # without a head (it trains whole), an explicit `train: all` refuses them rather than drop them silently
        whole_fix = "set them to 0 / 1, or use method=fingermarks_whole (the whole copy's measured settings)"
        for option in HEAD_ONLY_OPTIONS:
            if float(embedding.get(option, 0)) and embedding.get("train", "all") == "all":
                raise ConfigError(f"method.embedding.{option} trains parts of the head: it needs method.embedding.train=head "
                                  f"or auto; with train=all {whole_fix}")
        # users embedded per run: 1 each its own (the paper); k > 1 stacks k users' heads (embedding/stacked.py)
        self.stack_users = int(embedding.get("stack_users", 1))
        if self.stack_users < 1:
            raise ConfigError(f"method.embedding.stack_users must be >= 1, got {self.stack_users}")
        if self.stack_users > 1 and embedding.get("train", "all") == "all":
            raise ConfigError("method.embedding.stack_users > 1 stacks users' heads: it needs method.embedding.train=head "
                              f"or auto; with train=all {whole_fix}")
        if embedding.get("copies_per", "group") not in ("key", "group"):
            raise ConfigError(f"method.embedding.copies_per must be key or group, got {embedding.get('copies_per')!r}")
        # checked here, not when the first user's fit starts (after keygen)
        self.precision = str(embedding.get("precision", "32-true"))
        if self.precision not in EMBEDDING_PRECISIONS:
            raise ConfigError(f"method.embedding.precision={embedding.get('precision')!r}: expected one of "
                              f"{', '.join(EMBEDDING_PRECISIONS)}")

    # -- keygen ---------------------------------------------------------------------
    def _independent(self, ctx: RunContext, archs: list, base_seed: int, seed: int, role: str) -> list[nn.Module]:
        archs = [OmegaConf.create(a) if isinstance(a, dict) else a for a in archs]
        return [frozen(ctx.train_classifier(a, base_seed + 100 * seed + r, f"{role}{r}")[0]) for r, a in enumerate(archs)]

    def generate(self, host: nn.Module, ctx: RunContext, references: list[nn.Module], generator: torch.Generator) -> tuple[dict, dict]:
        """Batched fingerprint generation from oversampled candidates; keep the n most host-specific."""
        g = self.gen
        host = frozen(copy.deepcopy(host))
        x0, i, source = sample_sources(host, ctx.datamodule, self.n * g.oversample, generator, return_indices=True)
        with torch.no_grad():
            logits0 = host(x0)
        j = logits0.argmin(1) if g.target == "least_likely" else _random_other(i, logits0.shape[1], generator)

        def objective(x: torch.Tensor, rows: torch.Tensor):
            logits, i_r, j_r = host(x), i[rows], j[rows]
            loss = fingermarks_loss(logits, i_r, j_r, g.k, g.lam)
            done = target_margin(logits, j_r) >= g.k
            if references:
                penalty = conferrable_penalty(references, x, i_r, j_r)
                loss = loss + g.conferrable * penalty
                done = done & (penalty < g.penalty_done)
            return loss, done

        result = optimise_inputs(x0, objective, steps=g.steps, lr=g.lr, input_range=tuple(ctx.datamodule.input_range),
                                 eps=g.eps, norm=g.norm)
        x = result.images
        host_ok = predict_labels(host, x) == j
        ref_matches = torch.zeros(len(x), dtype=torch.long)
        for ref in references:
            pred = predict_labels(ref, x)
            ref_matches += ((pred == i) | (pred == j)).long()
        dist = (x - x0).flatten(1).abs().amax(1)
        with torch.no_grad():
            ref_prob = conferrable_penalty(references, x, i, j)
        tiebreak = ref_prob if g.tiebreak == "reference_prob" else (dist * 100).floor()  # L-inf in 0.01 steps
        keep = select_triggers(host_ok, ref_matches, tiebreak, self.n)
        if int(host_ok[keep].sum()) < self.n:
            raise KeyGenError(f"only {int(host_ok.sum())} of {len(x)} candidates make the host answer their target j, "
                              f"{self.n} needed: raise method.generation.oversample or method.generation.steps, "
                              f"or lower method.generation.conferrable")
        report = {
            "candidates": len(x), "reached": int(result.reached.sum()), "host_answers_j": int(host_ok.sum()),
            "selected_host_answers_j": int(host_ok[keep].sum()),
            "selected_reference_match_rate": float(ref_matches[keep].float().mean() / max(len(references), 1)),
            "selected_reference_prob": float(ref_prob[keep].mean()) if references else None,
            "linf_mean": float(dist[keep].mean()), "linf_max": float(dist[keep].max()),
            "steps": result.steps, "seconds": result.seconds,
        }
        report["source_indices"] = source[keep].tolist()
        return {"triggers": x[keep], "i": i[keep], "j": j[keep]}, report

    def keygen(self, host: nn.Module, ctx: RunContext, users: list[str], seed: int, secret: KeySecret | None = None) -> Key:
        """Triggers, pairs, keyed swap and user IDs, every random choice from `secret` (fresh when
        None); `seed` only picks the owner's reference and null models, which are not secret."""
        secret = secret or KeySecret.fresh()
        references = self._independent(ctx, self.references, REFERENCE_SEED, seed, "reference")
        with channels_last(host):  # the same values, faster forward and input-gradient passes (training.layout)
            fp, report = self.generate(host, ctx, references, secret.generator("sources"))
            pairs = torch.stack([fp["i"], fp["j"]], 1)
            rule = self.decision.rule
            if rule not in RULES:
                raise ConfigError(f"method.decision.rule={rule!r}: expected one of {', '.join(sorted(RULES))}")
            decision = RULES[rule].calibrate(self.decision, ctx, seed, fp["triggers"], pairs)
            scales = [float(v) for v in self.decision.get("probe_scales") or []]
            if scales and rule == "code":
                decision |= probe_sets(ctx.datamodule, fp["triggers"], report["source_indices"], scales)
            decision |= self.noise_lean_fields(host, fp["triggers"], pairs, ctx.datamodule.input_range, secret.generator)
        swap = (torch.rand(self.n, generator=secret.generator("swap")) < 0.5 if self.encoding.keyed_swap
                else torch.zeros(self.n, dtype=torch.bool))
        key = Key.for_host(self.name, host, ctx.datamodule, fp["triggers"], pairs, decision, seed,
                           {"generation": report, "source_indices": report.pop("source_indices")}, secret, swap=swap)
        key.add_users(list(users), None, int(self.ids.min_distance))
        return key

    def noise_lean_fields(self, host: nn.Module, triggers: torch.Tensor, pairs: torch.Tensor, input_range,
                          secret_generator) -> dict[str, Any]:
        """The key's `noise_leans` / `noise_lean_stds` under this config (none when the config asks for none, or
        the rule is not the code rule); `secret_generator(purpose)` is the key secret's (`KeySecret.generator`,
        or `Key.secret_generator` to add them to a key made before keys held them: the same draws)."""
        stds = [float(v) for v in self.decision.get("noise_lean_stds") or []]
        if not stds or self.decision.rule != "code":
            return {}
        return noise_leans(host, triggers, pairs, stds, int(self.decision.get("noise_lean_reads", 64)), input_range,
                           secret_generator("noise_leans"))

    # -- embed ----------------------------------------------------------------------
    def _head_split(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, nn.Module, Any, tuple]:
        """Head-only embedding (`embedding.train: head`, embedding/head.py): the user's copy's trunk (frozen), its
        head, the trunk as an encoder, and the trunk's outputs for the training set with their labels. Those are
        computed once per trunk (the host's: every user's copy starts from it) and kept for the next user."""
        from fingermarks.embedding.head import encode, freeze, split_head, trunk_digest

        start = self.emb.get("head_from")
        trunk, head = split_head(model, None if start is None else int(start))
        freeze(trunk)
        digest = trunk_digest(trunk)
        if getattr(self, "_clean_features", (None,))[0] != digest:
            ctx.datamodule.setup("fit")
            x, y = ctx.datamodule.train_eval_set.tensors()
            self._clean_features = (digest, encode(trunk, x), y)
        return trunk, head, functools.partial(encode, trunk), self._clean_features[1:]

    def _teacher(self, host: nn.Module, ctx: RunContext, clean: tuple | None) -> dict[str, Any]:
        """`clean` (the training set without augmentation, or the head's inputs for it) and `teacher`, the host's
        logits for each of those images: computed once per host and kept for the next user. Where the head trains,
        the host's head reads the trunk outputs already computed (the same logits, bit for bit, without a second pass
        of the training set through the trunk: 1.5 s of a 4-user run on mnist5k)."""
        from fingermarks.embedding.head import encode, split_head, trunk_digest

        ident = (trunk_digest(host), clean is None)
        if getattr(self, "_teacher_logits", (None,))[0] != ident:
            ctx.datamodule.setup("fit")
            x, y = ctx.datamodule.train_eval_set.tensors()
            if clean is None:
                logits = torch.cat(model_outputs(host.eval(), x, 512))
            else:
                start = self.emb.get("head_from")
                logits = encode(split_head(host, None if start is None else int(start))[1], clean[0])
            self._teacher_logits = (ident, logits, (x, y))
        return {"clean": self._teacher_logits[2] if clean is None else clean, "teacher": self._teacher_logits[1]}

    def _dormant(self, split, clean, triggers) -> tuple | None:
        """`embedding.dormant_units` hidden units of the head kept silent on clean images and firing on the triggers,
        with the clean and trigger trunk outputs they are trained on (head-only embedding), or None."""
        count = int(self.emb.get("dormant_units", 0))
        if not count or split is None:
            return None
        from fingermarks.embedding.head import dormant_units

        return (clean[0], triggers, dormant_units(split[1], clean[0], count), float(self.emb.get("dormant_weight", 1.0)),
                float(self.emb.get("dormant_margin", 1.0)))

    def _ratio(self, triggers: torch.Tensor, targets: torch.Tensor, space: tuple[float, float]) -> DynamicRatio:
        """A user's dynamic-ratio state at this config's settings, over `triggers` (images or trunk outputs) in `space`."""
        e = self.emb
        return DynamicRatio(triggers, targets, p0=e.p0, dp=e.dp, p_max=e.p_max, readmit_prob=e.readmit_prob,
                            done_prob=e.done_prob, adversarial=e.adversarial, input_range=space,
                            deepfool_candidates=e.deepfool_candidates, deepfool_max_iter=e.deepfool_max_iter,
                            plateau_epochs=int(e.get("plateau_epochs", 0)), plateau_prob=float(e.get("plateau_prob", 0.7)),
                            plateau_delta=float(e.get("plateau_delta", 0.01)))

    def _pruned_copies(self, trunk: nn.Module, clean: tuple) -> dict[str, Any]:
        """The embedding data's pruned-copy settings (`embedding.prune_copies`), with the trunk's channel order; none when off."""
        if not int(self.emb.get("prune_copies", 0)):
            return {}
        from fingermarks.embedding.head import channel_order

        return {"prune_copies": int(self.emb.prune_copies), "prune_max": float(self.emb.get("prune_max", 0.9)),
                "channel_order": channel_order(trunk, clean[0])}

    def _shared_copies(self, key: Key, trunk: nn.Module, seeds: list[int]) -> tuple[int, dict | None]:
        """The seed of a group's shared trigger copies and where its epochs' copies are kept: `embedding.copies_per: key`
        draws them from the key's fingerprint (not secret: the copies are noise and pruned channels) and keeps them for
        the key's next group (the trunk encodes an epoch's noisy copies once per key, not once per group); `group`
        draws them from the group's first seed and keeps nothing (the stacked default before 2026-12-07)."""
        if self.emb.get("copies_per", "group") == "group":
            return int(seeds[0]), None
        from fingermarks.embedding.head import trunk_digest
        from fingermarks.key import key_fingerprint

        fingerprint = key_fingerprint(key)
        e = self.emb
        ident = (fingerprint, trunk_digest(trunk), e.noise_copies, e.noise_std, e.get("prune_copies", 0), e.get("prune_max", 0.9))
        if getattr(self, "_copies", (None,))[0] != ident:
            self._copies = (ident, {})
        return int(fingerprint[:8], 16), self._copies[1]

    def _trains(self, model: nn.Module) -> str:
        """`all` or `head`: what `embedding.train` asks of this architecture (`auto`: head where it applies)."""
        from fingermarks.embedding.head import head_applies

        mode = self.emb.get("train", "all")
        if mode not in ("all", "head", "auto"):
            raise ConfigError(f"method.embedding.train must be all, head or auto, got {mode!r}")
        return "head" if mode == "head" or (mode == "auto" and head_applies(model)) else "all"

    def group_size(self, host: nn.Module) -> int:
        """Users embedded in one run on this host: `embedding.stack_users` where its head trains, else 1."""
        return self.stack_users if self._trains(host) == "head" else 1

    def embed(self, host: nn.Module, key: Key, user: str, ctx: RunContext, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        e = self.emb
        model = start_user_model(key, host, seed)
        targets = key.target_labels(key.users[user])
        start = time.perf_counter()
        trains = self._trains(model)
        triggers, space, split, head_data = key.triggers, tuple(ctx.datamodule.input_range), None, {}
        if trains == "head":
            # the callback works where the head does: triggers and DeepFool neighbours are trunk outputs, bounded
            # by the range the trunk's outputs take on the clean images
            trunk, head, encoder, clean = self._head_split(model, ctx)
            triggers, space, split = encoder(key.triggers), (float(clean[0].min()), float(clean[0].max())), (trunk, head)
            head_data = {"encode": encoder, "clean": clean, "trigger_images": key.triggers, **self._pruned_copies(trunk, clean)}
        # (train=auto on a model without a head: the whole copy trains, and the head-only options do not apply)
        ratio = self._ratio(triggers, targets, space)
        distill = float(e.get("distill", 0.0))
        if distill > 0:
            head_data |= self._teacher(host, ctx, head_data.get("clean"))
        data = EmbeddingData(ctx.datamodule, ratio, seed=seed, batch_size=e.batch_size, trigger_repeat=e.trigger_repeat,
                             noise_copies=e.noise_copies, noise_std=e.noise_std, clean_per_trigger=e.get("clean_per_trigger"),
                             **head_data)
        from hydra.utils import instantiate

        scheduler = instantiate(e.scheduler) if e.get("scheduler") is not None else None
        module = EmbeddingModule(model, ctx.datamodule.num_classes, instantiate(e.optimizer), anchor=float(e.anchor),
                                 robust_eps=float(e.robust_eps), input_range=tuple(ctx.datamodule.input_range),
                                 scheduler=scheduler, head=split, distill=distill,
                                 distill_temperature=float(e.get("distill_temperature", 2.0)),
                                 pruned_triggers=(triggers, targets) if split and float(e.get("prune_weights", 0)) > 0 else None,
                                 prune_weights_max=float(e.get("prune_weights", 0)), term_seed=seed,
                                 dormant=self._dormant(split, head_data.get("clean"), triggers))
        # clean accuracy per epoch (history, dashboards) costs a pass over the validation set each epoch;
        # `validate: false` skips it (the final accuracy on the test set is measured either way)
        validate = {} if e.validate else {"limit_val_batches": 0}
        trainer = ctx.trainer_factory(max_epochs=e.max_epochs, callbacks=[ratio], reload_dataloaders_every_n_epochs=1,
                                      logger=ctx.logger_factory(f"embed_{user}") or False,
                                      precision=self.precision, **validate)
        trainer.fit(module, datamodule=data)
        seconds = time.perf_counter() - start
        model.eval().requires_grad_(True)
        from fingermarks.embedding import embedding_outcome

        # judged here on the returned weights: under ddp_spawn the callback's state (history) stays in
        # the workers and only the weights and logged metrics come back
        epochs = int(trainer.callback_metrics.get("embed/epochs", 0))
        outcome = embedding_outcome(user, int((predict_labels(model, key.triggers) == targets).sum()), key.n, epochs,
                                    allow_partial=bool(e.get("allow_partial", False)),
                                    settings=f"method.embedding.max_epochs (now {e.max_epochs}) or method.embedding.optimizer.lr")
        return model, {
            "embed_seconds": seconds, "embed_epochs": epochs, "embed_steps": int(trainer.global_step), "trained": trains, **outcome,
            "clean_acc": accuracy(model, ctx.datamodule.test_set), "history": ratio.history, "stopped": stop_reason(ratio.history),
        }

    def embed_group(self, host: nn.Module, key: Key, users: list[str], ctx: RunContext,
                    seeds: list[int]) -> list[tuple[nn.Module, dict[str, Any]]]:
        """`users` embedded in one run (`embedding.stack_users`; embedding/stacked.py): their heads stacked, one step
        training all of them. Head-only; each user's info as `embed` gives it, its `embed_seconds` the group's time
        over its size (`group_seconds` the whole)."""
        from hydra.utils import instantiate

        from fingermarks.embedding.stacked import StackedDynamicRatio, StackedEmbeddingData, StackedHeads
        from fingermarks.embedding import embedding_outcome

        e = self.emb
        if self._trains(host) != "head":  # train=auto on a model without a head: each user its own run
            return super().embed_group(host, key, users, ctx, seeds)
        unsupported = [o for o in GROUP_UNSUPPORTED if float(e.get(o) or 0)]
        if unsupported or self.precision != "32-true":
            raise ConfigError(f"method.embedding.stack_users > 1 does not train {', '.join(unsupported) or 'in ' + self.precision}: "
                              f"set method.embedding.stack_users=1 (each user its own run) for it")
        start = time.perf_counter()
        models = [start_user_model(key, host, seed) for seed in seeds]
        splits = [self._head_split(model, ctx) for model in models]  # the clean trunk outputs are computed once
        trunk, _, encoder, clean = splits[0]
        triggers, space = encoder(key.triggers), (float(clean[0].min()), float(clean[0].max()))
        targets = [key.target_labels(key.users[user]) for user in users]
        ratios = [self._ratio(triggers, t, space) for t in targets]
        distill = float(e.get("distill", 0.0))
        # the host's logits on the clean rows (kept for the next group, as for the next user)
        teacher = self._teacher(host, ctx, clean)["teacher"] if distill > 0 else None
        copies_seed, copies = self._shared_copies(key, trunk, seeds)
        data = StackedEmbeddingData(ratios, clean, encoder, key.triggers, seeds=list(seeds), group_seed=copies_seed,
                                    input_range=tuple(ctx.datamodule.input_range), batch_size=e.batch_size,
                                    trigger_repeat=e.trigger_repeat, noise_copies=e.noise_copies, noise_std=e.noise_std,
                                    teacher=teacher, copies=copies, **self._pruned_copies(trunk, clean))
        heads = [split[1] for split in splits]
        scheduler = instantiate(e.scheduler) if e.get("scheduler") is not None else None
        prune_weights = float(e.get("prune_weights", 0))
        module = StackedHeads(heads, instantiate(e.optimizer), scheduler, distill=distill,
                              distill_temperature=float(e.get("distill_temperature", 2.0)),
                              pruned_triggers=(triggers, torch.stack(targets)) if prune_weights > 0 else None,
                              prune_weights_max=prune_weights, term_seed=int(seeds[0]))
        progress = StackedDynamicRatio(ratios)
        trainer = ctx.trainer_factory(max_epochs=e.max_epochs, callbacks=[progress], reload_dataloaders_every_n_epochs=1,
                                      logger=ctx.logger_factory(f"embed_{users[0]}" + (f"+{len(users) - 1}" if len(users) > 1 else "")) or False,
                                      precision=self.precision, limit_val_batches=0)
        trainer.fit(module, datamodule=data)
        seconds = time.perf_counter() - start
        # the test accuracy of every user on one pass of the test set through the shared trunk
        ctx.datamodule.setup("test")
        test_x, test_y = ctx.datamodule.test_set.tensors()
        test_features = encoder(test_x)
        results = []
        for u, (user, model, head) in enumerate(zip(users, models, heads)):
            head.load_state_dict(module.head_state(u))
            model.eval().requires_grad_(True)
            head_accuracy = accuracy(head, torch.utils.data.TensorDataset(test_features, test_y))
            outcome = embedding_outcome(user, int((predict_labels(model, key.triggers) == targets[u]).sum()), key.n,
                                        progress.epochs[u], allow_partial=bool(e.get("allow_partial", False)),
                                        settings=f"method.embedding.max_epochs (now {e.max_epochs}) or method.embedding.optimizer.lr")
            results.append((model, {
                "embed_seconds": seconds / len(users), "group_seconds": seconds, "embed_group": list(users),
                "embed_epochs": progress.epochs[u], "embed_steps": int(trainer.global_step), "trained": "head", **outcome,
                "clean_acc": head_accuracy, "history": ratios[u].history, "stopped": stop_reason(ratios[u].history)}))
        return results


def _random_other(i: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    shift = torch.randint(1, m, (len(i),), generator=generator)
    return (i + shift) % m
