"""Several users' heads embedded in one run (method.embedding.stack_users, embedding/stacked.py)."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from torch import nn

import fingermarks as fm
from conftest import TINY
from fingermarks.embedding import DynamicRatio, deepfool, stop_reason
from fingermarks.embedding import head as head_mod
from fingermarks.embedding.stacked import StackedDynamicRatio, StackedEmbeddingData, StackedHeads, _rows_forward, _Steps
from fingermarks.errors import ConfigError
from fingermarks.metrics import accuracy

torch.set_num_threads(1)


def heads(count: int, features: int = 12) -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 3)) for _ in range(count)]


def test_the_stacked_forward_is_each_users_head() -> None:
    made = heads(3)
    stacked = StackedHeads(made, torch.optim.Adam).eval()
    x = torch.randn(3, 5, 12)
    out = stacked(x)
    for u, head in enumerate(made):
        assert torch.allclose(out[u], head.eval()(x[u]), atol=1e-6)
        assert all(torch.equal(stacked.head_state(u)[n], t) for n, t in head.state_dict().items())
    # with `users`, row block i goes through user users[i]'s head
    assert torch.allclose(stacked(x[:2], torch.tensor([2, 0])), torch.stack([made[2](x[0]), made[0](x[1])]), atol=1e-6)


def test_a_step_trains_each_user_on_its_own_rows_and_leaves_a_done_user_as_it_was(monkeypatch) -> None:
    made = heads(3)
    stacked = StackedHeads(made, functools.partial(torch.optim.Adam, lr=0.1))
    monkeypatch.setattr(stacked, "log", lambda *a, **k: None)  # no trainer to log to
    opt = stacked.configure_optimizers()
    assert opt.defaults.get("fused")  # the fused kernel where the optimizer has one
    before = [stacked.head_state(u) for u in range(3)]
    x, y = torch.randn(3, 4, 12), torch.randint(0, 3, (3, 4))
    w = torch.ones(3, 4)
    w[1] = 0  # user 1 has no rows in this step: no gradient
    everyone = torch.arange(3)
    for step in range(3):
        opt.zero_grad()
        stacked.training_step((x, y, w, everyone), step).backward()
        if step == 0:
            assert all(float(p.grad[1].abs().max()) == 0 for p in stacked.weights)
            assert all(float(p.grad[0].abs().max()) > 0 for p in stacked.weights if p.dim() > 1)
        opt.step()
        stacked.on_train_batch_end(None, None, step)
        if step == 0:
            stacked.freeze(torch.tensor([True, False, False]))  # user 0 is done after its first step
    after = [stacked.head_state(u) for u in range(3)]
    assert not all(torch.equal(before[0][n], after[0][n]) for n in after[0])  # the step before it was done
    frozen_at = {n: t.clone() for n, t in after[0].items()}
    opt.zero_grad()
    stacked.training_step((x[1:], y[1:], torch.ones(2, 4), torch.tensor([1, 2])), 3).backward()  # user 0 left the epoch
    assert all(float(p.grad[0].abs().max()) == 0 for p in stacked.weights)
    opt.step()
    stacked.on_train_batch_end(None, None, 3)
    # Adam's momentum would move a user with no gradient: a done user is restored after every step
    assert all(torch.equal(stacked.head_state(0)[n], frozen_at[n]) for n in frozen_at)
    assert not all(torch.equal(stacked.head_state(2)[n], after[2][n]) for n in after[2])


def test_an_epoch_cuts_every_users_rows_into_the_same_number_of_steps() -> None:
    pool = torch.cat([torch.arange(10.0), 100 + torch.arange(7.0)]).view(17, 1)
    index = [torch.randperm(10), 10 + torch.randperm(7)]  # each user's rows of the pool, in its order
    targets = [pool[i, 0].long() for i in index]  # a row's target is its value: rows and targets stay together
    steps = _Steps(pool, index, targets, 3, torch.tensor([0, 2]))
    assert len(steps) == 3 and steps.width == 4
    seen = [[], []]
    for s in range(3):
        x, y, w, users = steps[s]
        assert users.tolist() == [0, 2]
        assert x.shape == (2, 4, 1) and y.shape == w.shape == (2, 4)
        for u in range(2):
            kept = w[u].bool()
            assert kept.sum() == len(torch.tensor_split(targets[u], 3)[s])  # near-equal batches, padded at the end
            assert torch.equal(x[u, kept, 0].long(), y[u, kept])  # each row with its own target
            assert bool((x[u, ~kept] == 0).all())  # padding is zero rows
            seen[u] += y[u, kept].tolist()
    assert seen == [t.tolist() for t in targets]  # every row once, in the given order
    assert pool.view(-1).tolist() == list(range(10)) + list(range(100, 107))  # the gathers left the pool as it was


def test_groups_of_a_key_share_each_epochs_copies_encoded_once() -> None:
    """`copies_per: key`: a group draws an epoch's noisy copies from the key's seed and keeps them in `copies`; the
    next group of the key reads them from there, and the trunk encodes them once. Without `copies`, a group encodes its
    own, from its own seed."""
    encoded = []

    def encode(x):
        encoded.append(len(x))
        return x.flatten(1) * 2

    images = torch.rand(5, 1, 2, 2)

    def group(seed, copies):
        return StackedEmbeddingData([None], (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)), encode, images, seeds=[seed],
                                    group_seed=7, input_range=(0.0, 1.0), noise_copies=2, noise_std=0.3, copies=copies)

    kept = {}
    first = group(1, kept)._shared(0)
    assert encoded == [10] and set(kept) == {0}
    again = group(2, kept)._shared(0)  # another group of the key: the same copies, not encoded again
    assert encoded == [10] and all(torch.equal(a, b) for a, b in zip(first, again))
    group(2, kept)._shared(1)  # the next epoch: new copies
    assert encoded == [10, 10] and set(kept) == {0, 1} and not torch.equal(kept[0][0], kept[1][0])
    alone = group(2, None)._shared(0)  # nothing kept: encoded afresh, the same draw from the same seed
    assert encoded == [10, 10, 10] and torch.equal(alone[0], first[0])


def test_the_stacked_distillation_is_each_users_own_term() -> None:
    from fingermarks.embedding.module import distillation, grouped_distillation

    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    teacher[0, :2] = float("nan")  # user 0's first rows are triggers: no host logits
    w = torch.ones(2, 6)
    w[1, 4:] = 0  # user 1's batch is shorter: padding
    got = grouped_distillation(logits, teacher, w, 2.0)
    assert got[0] == pytest.approx(float(distillation(logits[0], teacher[0], 2.0)), rel=1e-5)
    assert got[1] == pytest.approx(float(distillation(logits[1, :4], teacher[1, :4], 2.0)), rel=1e-5)
    # the steps carry each row's host logits, NaN for the rows without (triggers, padding)
    pool, targets = torch.arange(8.0).view(8, 1), [torch.arange(5), torch.arange(3)]
    teacher_pool = torch.randn(8, 3)
    teacher_pool[1] = float("nan")  # a trigger row
    x, y, w, users, t = _Steps(pool, [torch.arange(5), torch.arange(5, 8)], targets, 2, torch.tensor([0, 1]), teacher_pool)[0]
    assert torch.allclose(t[0, :3], teacher_pool[:3], equal_nan=True) and torch.equal(t[1, :2], teacher_pool[5:7])
    assert bool(t[1, 2:].isnan().all())  # user 1's padding
    assert not bool(teacher_pool[[0, 2, 3, 4]].isnan().any())  # the pool itself is untouched
    # the step's loss: each user's cross-entropy plus `distill` times its term (eval mode: no dropout)
    stacked = StackedHeads(heads(2, features=1), torch.optim.Adam, distill=0.5).eval()
    plain = StackedHeads(heads(2, features=1), torch.optim.Adam).eval()
    with torch.no_grad():
        term = grouped_distillation(plain(x, users), t, w, 2.0)
        assert float(term.min()) > 0
        assert float(stacked.training_step((x, y, w, users, t), 0)) == pytest.approx(
            float(plain.training_step((x, y, w, users), 0)) + 0.5 * float(term.sum()), rel=1e-5)
    with pytest.raises(ValueError, match="distill"):
        StackedHeads(heads(2), torch.optim.Adam, distill=-1.0)


def test_the_stacked_pruned_trigger_term_is_each_users_own() -> None:
    """`prune_weights` in a group: each user's triggers through its own head with each Linear matrix pruned alone, as
    EmbeddingModule's term (head.magnitude_pruned_forward) prunes one user's head; the step adds it once per user."""
    import torch.nn.functional as F

    made = heads(3)
    for i, h in enumerate(made):  # three different heads
        with torch.no_grad():
            h[0].weight.mul_(1 + i)
    features, targets = torch.rand(5, 12), torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0], [1, 0, 0, 2, 2]])
    stacked = StackedHeads(made, torch.optim.Adam, pruned_triggers=(features, targets), prune_weights_max=0.9, term_seed=3).eval()
    users = torch.tensor([0, 2])  # user 1 is done: its head is not run
    with torch.no_grad():
        got = stacked.pruned_trigger_losses(users, 0.6)
        for i, u in enumerate(users.tolist()):
            alone = F.cross_entropy(head_mod.magnitude_pruned_forward(made[u].eval(), features, 0.6), targets[u])
            assert float(got[i]) == pytest.approx(float(alone), rel=1e-5)
        assert abs(float(got[0]) - float(F.cross_entropy(made[0](features), targets[0]))) > 1e-4  # it pruned
    # each user's matrix pruned alone: the same share of zeros in every user's, whatever the other users' magnitudes
    kept = head_mod.keep_largest(torch.stack([h[0].weight for h in made]).detach(), 0.5)
    assert [int((m == 0).sum()) for m in kept] == [int(0.5 * made[0][0].weight.numel())] * 3
    # the step: each user's cross-entropy plus its pruned-trigger term at one rate drawn per step from term_seed
    plain = StackedHeads(heads(3), torch.optim.Adam).eval()
    x, y, w = torch.rand(3, 4, 12), torch.randint(0, 3, (3, 4)), torch.ones(3, 4)
    everyone = torch.arange(3)
    rate = float(torch.rand((), generator=torch.Generator().manual_seed(3))) * 0.9
    fresh = StackedHeads(heads(3), torch.optim.Adam, pruned_triggers=(features, targets), prune_weights_max=0.9, term_seed=3).eval()
    with torch.no_grad():
        expected = float(plain.training_step((x, y, w, everyone), 0)) + float(fresh.pruned_trigger_losses(everyone, rate).sum())
        assert float(fresh.training_step((x, y, w, everyone), 0)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="prune_weights_max"):
        StackedHeads(heads(2), torch.optim.Adam, pruned_triggers=(features, targets[:2]), prune_weights_max=0.0)


def test_one_deepfool_search_over_several_users_rows_finds_each_users_neighbours() -> None:
    made = heads(2)
    stacked = StackedHeads(made, torch.optim.Adam)
    x = torch.rand(10, 12)
    owner = torch.tensor([0] * 6 + [1] * 4)
    together = deepfool(stacked, x, candidates=3, max_iter=10, input_range=(0.0, 1.0),
                        rows_forward=_rows_forward(stacked, owner))
    for u, head in enumerate(made):
        alone = deepfool(head, x[owner == u], candidates=3, max_iter=10, input_range=(0.0, 1.0))
        assert torch.allclose(together[owner == u], alone, atol=1e-5)
    assert stacked.training  # the search ran in eval mode and left the mode as it was


def test_the_group_callback_reads_each_user_on_its_own_head() -> None:
    made = heads(2)
    triggers = torch.rand(6, 12)
    stacked = StackedHeads(made, torch.optim.Adam)
    with torch.no_grad():
        labels = made[0].eval()(triggers).argmax(1)
    ratios = [DynamicRatio(triggers, labels, p0=0.2, readmit_prob=0.0, done_prob=0.0, deepfool_candidates=3, deepfool_max_iter=5),
              DynamicRatio(triggers, (labels + 1) % 3, p0=0.2, deepfool_candidates=3, deepfool_max_iter=5)]
    callback = StackedDynamicRatio(ratios)

    class Trainer:  # what the callback reads of Lightning's trainer
        current_epoch, should_stop = 0, False
        strategy = type("S", (), {"broadcast": staticmethod(lambda value, src=0: value)})()

    callback.on_fit_start(Trainer(), stacked)
    # user 0's targets are its head's own labels: done before any step, frozen; user 1 trains on every trigger
    assert stacked.done.tolist() == [True, False] and not Trainer.should_stop
    assert ratios[0].history[0]["matched"] == 6 and ratios[1].history[0]["matched"] < 6
    assert len(ratios[1].neighbours) == int(ratios[1].active.sum()) > 0


def test_a_group_embeds_every_user_and_matches_each_alone(cache_dir, tmp_path) -> None:
    overrides = [*TINY, f"cache_dir={cache_dir}", "users=[alice,bob,carol]", "method.embedding.train=head",
                 "method.embedding.prune_copies=1", "method.embedding.stack_users=2"]
    owner = fm.owner(tmp_path / "run", overrides)
    host, _ = fm.train_host(owner)
    key = fm.make_key(owner, host)
    made = owner.method.embed_group(host, key, ["alice", "bob"], owner.ctx, [11, 12])
    again = owner.method.embed_group(host, key, ["alice", "bob"], owner.ctx, [11, 12])
    host_trunk = head_mod.split_head(host)[0].state_dict()
    for user, (model, info), (model2, _) in zip(["alice", "bob"], made, again):
        assert info["all_matched"] and info["embed_group"] == ["alice", "bob"] and info["embed_epochs"] >= 1
        assert info["stopped"] == stop_reason(info["history"]) and info["stopped"] in ("targets", "plateau", "max_epochs")
        assert info["embed_seconds"] == pytest.approx(info["group_seconds"] / 2)
        assert info["clean_acc"] == pytest.approx(accuracy(model, owner.ctx.datamodule.test_set), abs=1e-6)
        trunk = head_mod.split_head(model)[0].state_dict()
        assert all(torch.equal(trunk[n], host_trunk[n]) for n in trunk)  # only the head moved
        assert not torch.equal(model.classifier.weight, host.classifier.weight)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))  # deterministic
        assert fm.verify(key, model).traced_user == user
    assert not torch.equal(made[0][0].classifier.weight, made[1][0].classifier.weight)
    # the default's distillation: the host's logits for the clean rows, read by the host's head off the trunk outputs,
    # are the host's own outputs
    from fingermarks.metrics import model_outputs

    owner.ctx.datamodule.setup("fit")
    assert owner.method.emb.distill > 0
    assert torch.allclose(owner.method._teacher_logits[1], torch.cat(model_outputs(host.eval(), owner.ctx.datamodule.train_eval_set.tensors()[0], 512)), atol=1e-5)
    # the default `copies_per: key`: the epochs' shared copies are kept for the key's next group, as many as were trained
    epochs = max(info["embed_epochs"] for _, info in made)
    assert owner.method._copies[1] and set(owner.method._copies[1]) <= set(range(epochs + 1))

    # the pipeline embeds the users in groups of two (alice+bob, carol), and a rerun skips all of them
    paths = fm.distribute(owner, host, key)
    records = {u: json.loads((p.parent / "embed.json").read_text()) for u, p in paths.items()}
    assert [records[u]["embed_group"] for u in ("alice", "bob", "carol")] == [["alice", "bob"], ["alice", "bob"], ["carol"]]
    assert all(fm.verify(key, p).traced_user == u for u, p in paths.items())
    stamps = {u: p.stat().st_mtime_ns for u, p in paths.items()}
    fm.distribute(owner, host, key)
    assert {u: p.stat().st_mtime_ns for u, p in paths.items()} == stamps


@pytest.mark.parametrize("overrides, match", [
    (["embedding.stack_users=2", "embedding.train=all", "embedding.prune_copies=0"], "train=head or auto"),
    (["embedding.stack_users=0"], ">= 1"),
    (["embedding.copies_per=user"], "copies_per must be key or group"),
])
def test_stacking_is_refused_where_it_cannot_apply(overrides, match) -> None:
    from test_embedding import method_from_yaml

    with pytest.raises(ConfigError, match=match):
        method_from_yaml("fingermarks", *overrides)
    assert method_from_yaml("fingermarks", "embedding.stack_users=2", "embedding.train=head").stack_users == 2


def test_an_option_only_a_users_own_run_trains_is_refused_in_a_group(cache_dir, tmp_path) -> None:
    owner = fm.owner(tmp_path / "run", [*TINY, f"cache_dir={cache_dir}", "users=[alice,bob]", "method.embedding.train=head",
                                        "method.embedding.stack_users=2", "method.embedding.anchor=0.5"])
    host, _ = fm.train_host(owner)
    key = fm.make_key(owner, host)
    with pytest.raises(ConfigError, match="anchor.*stack_users=1"):
        owner.method.embed_group(host, key, ["alice", "bob"], owner.ctx, [1, 2])


def test_the_default_stacks_heads_and_trains_a_model_without_one_whole(ctx) -> None:
    """`train: auto` with the default's head recipe: a model with a dense head embeds four users per run; an MLP
    (no trunk to share) trains whole, each user its own run, without the head-only options (pruned copies)."""
    from fingermarks.models import MLP, SmallCNN
    from test_embedding import method_from_yaml, user_key

    method = method_from_yaml("fingermarks", "embedding.max_epochs=1", "embedding.allow_partial=true")
    assert method.group_size(SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4)) == 4
    torch.manual_seed(0)
    host = MLP(num_classes=10, input_shape=(1, 8, 8), hidden=[16]).eval()
    assert method.group_size(host) == 1
    key = user_key(host, ctx.datamodule, "fingermarks")
    key.users["bob"] = key.users["alice"].clone()
    made = method.embed_group(host, key, ["alice", "bob"], ctx, seeds=[1, 2])
    assert [info["trained"] for _, info in made] == ["all", "all"]
    assert all("embed_group" not in info and info["embed_epochs"] == 1 for _, info in made)
    assert all(any(not torch.equal(p, q) for p, q in zip(model.parameters(), host.parameters())) for model, _ in made)
