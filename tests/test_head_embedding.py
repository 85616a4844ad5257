"""Head-only embedding (method.embedding.train=head): the split, the frozen trunk, the shared clean features."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import fingermarks as fm
from conftest import TINY
from fingermarks.embedding import DynamicRatio, EmbeddingData, EmbeddingModule
from fingermarks.embedding import head as head_mod
from fingermarks.errors import ConfigError
from fingermarks.models import MLP, VGG11, ResNet18, SmallCNN

torch.set_num_threads(1)


def small_cnn(datamodule) -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=10, input_shape=(1, 8, 8), mean=datamodule.mean, std=datamodule.std, width=4).eval()


def test_split_head_composes_to_the_model_and_shares_its_weights(datamodule) -> None:
    model = small_cnn(datamodule)
    trunk, head = head_mod.split_head(model)
    x = datamodule.train_eval_set.tensors(torch.arange(16))[0]
    assert torch.equal(head(trunk(x)), model(x))
    assert isinstance(trunk[-1], nn.Flatten) and head[-1] is model.classifier
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in trunk.parameters()} | {id(p) for p in head.parameters()} == model_params
    # the head holds the fully connected layers only: no convolution, and most multiply-adds stay in the trunk
    assert not any(isinstance(m, nn.Conv2d) for m in head.modules())
    assert any(isinstance(m, nn.Conv2d) for m in trunk.modules())


@pytest.mark.parametrize("build", [lambda: ResNet18(num_classes=10, input_shape=(3, 32, 32), width=4),
                                   lambda: VGG11(num_classes=10, input_shape=(3, 32, 32), width=4)])
def test_a_head_of_the_final_layer_alone_is_refused(build) -> None:
    # RTAL re-initialises the final layer: a watermark held there alone is erased by construction
    with pytest.raises(ConfigError, match="final layer alone"):
        head_mod.split_head(build())


def test_a_model_without_a_flatten_in_its_features_is_refused() -> None:
    with pytest.raises(ConfigError, match="train=all"):
        head_mod.split_head(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def test_an_mlp_trains_whole() -> None:
    model = MLP(num_classes=10, input_shape=(1, 8, 8), hidden=[16])
    trunk, head = head_mod.split_head(model)  # the Flatten comes first: the head is every layer
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in model.parameters())
    assert not list(trunk.parameters())


def test_a_frozen_trunk_passes_the_input_gradient_but_gets_none(datamodule) -> None:
    model = small_cnn(datamodule)
    trunk, head = head_mod.split_head(model)
    head_mod.freeze(trunk)
    x = datamodule.train_eval_set.tensors(torch.arange(4))[0].requires_grad_(True)
    model(x).sum().backward()  # DeepFool needs this gradient through the frozen trunk
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in trunk.parameters())
    assert all(p.grad is not None for p in head.parameters())


def test_encode_runs_the_trunk_in_eval_mode_and_restores_it(datamodule) -> None:
    model = small_cnn(datamodule).train()
    trunk, _ = head_mod.split_head(model)
    x = datamodule.train_eval_set.tensors(torch.arange(40))[0]
    features = head_mod.encode(trunk, x, batch_size=16)  # three batches
    assert trunk.training
    with torch.no_grad():
        assert torch.allclose(features, trunk.eval()(x), atol=1e-6)
    assert head_mod.trunk_digest(trunk) == head_mod.trunk_digest(head_mod.split_head(small_cnn(datamodule))[0])
    with torch.no_grad():
        trunk[1].weight.add_(1e-3)
    assert head_mod.trunk_digest(trunk) != head_mod.trunk_digest(head_mod.split_head(small_cnn(datamodule))[0])


def test_head_data_draws_what_the_image_data_draws_through_the_trunk(datamodule) -> None:
    model = small_cnn(datamodule)
    trunk, _ = head_mod.split_head(model)
    x, y = datamodule.train_eval_set.tensors(torch.arange(10))
    images, targets = x.clone(), (y + 1) % 10
    encode = functools.partial(head_mod.encode, trunk)
    clean = (encode(datamodule.train_eval_set.tensors()[0]), datamodule.train_eval_set.labels)
    kwargs = {"seed": 3, "batch_size": 16, "trigger_repeat": 2, "noise_copies": 2, "noise_std": 0.3}
    by_image = EmbeddingData(datamodule, DynamicRatio(images, targets, p0=0.2, adversarial=False), **kwargs)
    by_feature = EmbeddingData(datamodule, DynamicRatio(encode(images), targets, p0=0.2, adversarial=False), **kwargs,
                               encode=encode, clean=clean, trigger_images=images)
    image_parts = by_image.train_dataloader().dataset.datasets
    feature_parts = by_feature.train_dataloader().dataset.datasets
    assert [len(p) for p in image_parts] == [len(p) for p in feature_parts] == [round(0.2 * len(clean[1])), 20, 20]
    for image_part, feature_part in zip(image_parts, feature_parts):
        xs, ys = zip(*[image_part[i] for i in range(len(image_part))])
        assert torch.allclose(encode(torch.stack(xs)), feature_part.tensors[0], atol=1e-6)
        assert torch.equal(torch.stack(ys), feature_part.tensors[1])
    with pytest.raises(ValueError, match="trigger_images"):
        EmbeddingData(datamodule, DynamicRatio(images, targets), seed=0, encode=encode, clean=clean)


def test_the_head_module_trains_the_head_only(datamodule) -> None:
    model = small_cnn(datamodule)
    trunk, head = head_mod.split_head(model)
    module = EmbeddingModule(model, 10, torch.optim.Adam, head=(trunk, head))
    params = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert params == {id(p) for p in head.parameters()}
    model.train()
    module.on_train_epoch_start()
    assert not trunk.training and head.training
    with pytest.raises(ValueError, match="train=all"):
        EmbeddingModule(model, 10, torch.optim.Adam, robust_eps=0.1, head=(trunk, head))


def test_head_only_embedding_keeps_the_trunk_and_traces_each_user(cache_dir, tmp_path, monkeypatch) -> None:
    owner = fm.owner(tmp_path / "run", [*TINY, f"cache_dir={cache_dir}", "users=[alice,bob]", "method.embedding.train=head"])
    host, _ = fm.train_host(owner)
    key = fm.make_key(owner, host)
    whole_set = len(owner.ctx.datamodule.train_eval_set)
    encoded = []
    real_encode = head_mod.encode
    monkeypatch.setattr(head_mod, "encode", lambda module, x, **kw: encoded.append((len(x), x.dim())) or real_encode(module, x, **kw))
    models = {user: fm.embed(owner, host, key, user) for user in ("alice", "bob")}
    assert encoded.count((whole_set, 4)) == 1  # the clean images' trunk outputs: once for both users
    # the default's distillation: the host's head reads the teacher's logits off those outputs, once for both users
    assert encoded.count((whole_set, 2)) == 1
    host_trunk = head_mod.split_head(host)[0].state_dict()
    for user, (model, info) in models.items():
        assert info["all_matched"] and info["embed_epochs"] >= 1
        trunk = head_mod.split_head(model)[0].state_dict()
        assert trunk.keys() == host_trunk.keys() and any("running_mean" in n for n in trunk)
        assert all(torch.equal(trunk[n], host_trunk[n]) for n in trunk)  # weights and batch-norm statistics
        assert not torch.equal(model.classifier.weight, host.classifier.weight)
        assert all(p.requires_grad for p in model.parameters())
        assert fm.verify(key, model).traced_user == user


@pytest.mark.parametrize("model, expected", [
    (lambda: SmallCNN(num_classes=10, input_shape=(1, 28, 28)), "head"),
    (lambda: ResNet18(num_classes=10, input_shape=(3, 32, 32), width=4), "all"),
    (lambda: MLP(num_classes=10, input_shape=(1, 8, 8), hidden=[16]), "all"),  # no trunk weights to share
])
def test_auto_trains_the_head_where_it_applies(tmp_path, model, expected) -> None:
    from hydra.utils import instantiate

    from conftest import compose_cfg

    method = instantiate(compose_cfg(["method.embedding.train=auto"], tmp_path).method)
    assert method._trains(model()) == expected
    method.emb.train = "all"
    assert method._trains(model()) == "all"
    method.emb.train = "heads"
    with pytest.raises(ConfigError, match="all, head or auto"):
        method._trains(model())


def test_head_from_moves_the_split_into_the_convolutions() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, input_shape=(1, 28, 28)).eval()
    trunk, head = head_mod.split_head(model, 10)  # the last convolution and the dense layers train
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(head(trunk(x)), model(x))
    assert head[0] is model.features[10] and isinstance(head[0], nn.Conv2d)
    assert trunk(x).shape == (4, 64, 14, 14)
    for bad in (0, len(model.features) + 1):
        with pytest.raises(ConfigError, match="head_from"):
            head_mod.split_head(model, bad)
    # the head an attacker re-draws (attacks.RTALHead) is always the dense part
    assert head_mod.head_layers(model)[0] is model.features[15]


def test_pruned_copies_zero_the_least_active_channels_first() -> None:
    torch.manual_seed(0)
    features = torch.rand(5, 8 * 3) + 0.1  # 5 rows, 8 channels of 3 positions, channel-major, no zero anywhere
    clean = torch.rand(50, 8, 3) * torch.arange(1, 9).flip(0).view(1, 8, 1)  # channel 7 least active, 0 most
    trunk = nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU(), nn.Flatten())
    order = head_mod.channel_order(trunk, clean.flatten(1))
    assert order.tolist() == list(range(7, -1, -1))
    copies = head_mod.pruned_copies(features, order, 40, 0.9, torch.Generator().manual_seed(1))
    assert copies.shape == (200, 24)
    maps, source = copies.view(200, 8, 3), features.repeat(40, 1).view(200, 8, 3)
    zeroed = (maps == 0).all(2)  # (rows, channels)
    kept = ~zeroed
    assert torch.equal(maps[kept], source[kept])  # what is kept is untouched
    removed = zeroed.sum(1)
    assert int(removed.max()) <= int(0.9 * 8) and int(removed.min()) == 0 and len(removed.unique()) > 3
    for row, count in zip(zeroed, removed):  # exactly the `count` least active channels
        assert torch.equal(row.nonzero().flatten().sort().values, order[:int(count)].sort().values)
    again = head_mod.pruned_copies(features, order, 40, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(copies, again)
    with pytest.raises(ConfigError, match="flattened channels"):
        head_mod.channel_order(trunk, clean.flatten(1)[:, :23])


def test_head_data_adds_pruned_copies_of_every_trigger(datamodule) -> None:
    model = small_cnn(datamodule)
    trunk, _ = head_mod.split_head(model)
    encode = functools.partial(head_mod.encode, trunk)
    x, y = datamodule.train_eval_set.tensors(torch.arange(6))
    clean = (encode(datamodule.train_eval_set.tensors()[0]), datamodule.train_eval_set.labels)
    ratio = DynamicRatio(encode(x), (y + 1) % 10, p0=0.1, adversarial=False)
    order = head_mod.channel_order(trunk, clean[0])
    data = EmbeddingData(datamodule, ratio, seed=0, trigger_repeat=1, encode=encode, clean=clean, trigger_images=x,
                         prune_copies=3, prune_max=0.5, channel_order=order)
    part = data.train_dataloader().dataset.datasets[-1]
    assert len(part) == 18 and torch.equal(part.tensors[1], ratio.targets.repeat(3))
    assert bool((part.tensors[0] == 0).any()) and not torch.equal(part.tensors[0], ratio.triggers.repeat(3, 1))
    with pytest.raises(ValueError, match="train=head"):
        EmbeddingData(datamodule, DynamicRatio(x, y), seed=0, prune_copies=1)


def test_pruned_copies_need_the_head_only_embedding() -> None:
    from test_embedding import method_from_yaml

    with pytest.raises(ConfigError, match="prune_copies trains parts of the head: it needs method.embedding.train=head or auto; "
                                          "with train=all set them to 0 / 1, or use method=fingermarks_whole"):
        method_from_yaml("fingermarks", "embedding.prune_copies=1", "embedding.train=all", "embedding.stack_users=1")
    assert method_from_yaml("fingermarks", "embedding.prune_copies=1", "embedding.train=head").emb.prune_copies == 1
    assert method_from_yaml("fingermarks", "embedding.prune_copies=1").emb.prune_copies == 1  # the default trains auto


def test_magnitude_pruned_forward_holds_the_smallest_weights_at_zero() -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.rand(4, 12)
    assert torch.equal(head_mod.magnitude_pruned_forward(head, x, 0.0), head(x))
    out = head_mod.magnitude_pruned_forward(head, x, 0.5)
    expected = copy.deepcopy(head)
    with torch.no_grad():
        for layer in (expected[0], expected[2]):
            w = layer.weight
            w.mul_(w.abs() > w.abs().flatten().kthvalue(int(0.5 * w.numel())).values)
            assert int((w == 0).sum()) == int(0.5 * w.numel())
    assert torch.allclose(out, expected(x), atol=1e-6) and not torch.allclose(out, head(x))
    out.sum().backward()  # the gradient reaches the kept weights only; the head's own weights are untouched
    pruned = expected[0].weight == 0
    assert bool((head[0].weight.grad[pruned] == 0).all()) and bool((head[0].weight.grad[~pruned] != 0).any())
    assert not bool((head[0].weight == 0).any())


def test_the_pruned_trigger_term_trains_the_triggers_through_a_pruned_head(datamodule) -> None:
    model = small_cnn(datamodule)
    trunk, head = head_mod.split_head(model)
    features = head_mod.encode(trunk, datamodule.train_eval_set.tensors(torch.arange(8))[0])
    targets = torch.arange(8) % 10
    batch = (features[:4], targets[:4])
    plain = EmbeddingModule(model, 10, torch.optim.Adam, head=(trunk, head))
    term = EmbeddingModule(model, 10, torch.optim.Adam, head=(trunk, head), pruned_triggers=(features, targets),
                           prune_weights_max=0.9, term_seed=1)
    with torch.no_grad():
        base = float(plain.training_step(batch, 0))
        extra = float(term.training_step(batch, 0)) - base
    assert extra > 0  # the triggers' cross-entropy through the pruned head was added
    assert set(term.state_dict()) == set(plain.state_dict())  # the triggers are never part of what is saved
    with pytest.raises(ValueError, match="pruned_triggers"):
        EmbeddingModule(model, 10, torch.optim.Adam, pruned_triggers=(features, targets))
    from test_embedding import method_from_yaml

    with pytest.raises(ConfigError, match="prune_weights trains parts of the head: it needs method.embedding.train=head"):
        method_from_yaml("fingermarks", "embedding.prune_weights=0.9", "embedding.train=all", "embedding.prune_copies=0",
                         "embedding.stack_users=1")


def test_dormant_units_are_the_least_active_and_the_term_silences_them(datamodule) -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        head[0].bias.copy_(torch.tensor([3.0, -9.0, 1.0, -9.0, 2.0]))  # units 1 and 3 never fire on inputs in [0, 1]
    features = torch.rand(40, 6)
    assert sorted(head_mod.dormant_units(head, features, 2).tolist()) == [1, 3]
    for bad in (0, 5):
        with pytest.raises(ConfigError, match="dormant_units"):
            head_mod.dormant_units(head, features, bad)
    with pytest.raises(ConfigError, match="Linear followed by a ReLU"):
        head_mod.hidden_layer(nn.Sequential(nn.Linear(6, 3)))
    # in a module: the term adds the clean images' pre-activations above -margin, and training on it lowers them
    model = small_cnn(datamodule)
    trunk, head = head_mod.split_head(model)
    clean = head_mod.encode(trunk, datamodule.train_eval_set.tensors(torch.arange(64))[0])
    units = torch.arange(4)
    batch = (clean[:8], torch.zeros(8, dtype=torch.long))
    plain = EmbeddingModule(model, 10, torch.optim.Adam, head=(trunk, head))
    silenced = EmbeddingModule(model, 10, torch.optim.Adam, head=(trunk, head), dormant=(clean, clean[:4], units, 1.0, 5.0))
    with torch.no_grad():
        assert float(silenced.training_step(batch, 0)) > float(plain.training_step(batch, 0))
    layer = head_mod.hidden_layer(head)
    before = float(layer(clean)[:, units].mean())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        (silenced.training_step(batch, 0) - plain.training_step(batch, 0)).backward()
        optimizer.step()
    assert float(layer(clean)[:, units].mean()) < before
    assert set(silenced.state_dict()) == set(plain.state_dict())
