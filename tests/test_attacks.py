"""Each attack, a step or two on digits with a tiny SmallCNN: does it change what it should, and only that?"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import CONF, QUIET_TRAINER
from omegaconf import OmegaConf
from torch import nn

from fingermarks.attacks import (
    ATTACKS, FTAL, FTLL, RTAL, AdvTrain, AdvTrainPGD, AttackModule, CollusionAverage, CollusionFinetune, CollusionVote,
    Distill, Evasion, FinePrune, InputNoise, OnnxInt8, Prune, Quantize, RTALHead, VoteSuspect, attacker_data, choose_victims,
)
from fingermarks.attacks.adv_train import AccumulatingFGSM
from fingermarks.perturbations import fgsm, pgd
from fingermarks.attacks.base import Attack, make_attack
from fingermarks.attacks.collusion import average_weights
from fingermarks.attacks.fine_prune import last_conv, mean_activation
from fingermarks.attacks.prune import layer_zero_fractions, zero_fraction
from fingermarks.errors import ConfigError
from fingermarks.metrics import predict_labels
from fingermarks.secret import KeySecret
from fingermarks.models import VGG11, SmallCNN
from fingermarks.training.classifier import ClassifierModule

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def split_dm():
    """Digits with the configs' attacker split: 838 owner images, 419 attacker images."""
    from fingermarks.data import DigitsDataModule

    dm = DigitsDataModule(attacker_size=0.3333)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def victim(tiny_classifier):
    return tiny_classifier


@pytest.fixture(scope="module")
def data(split_dm):
    return attacker_data(split_dm, 256, seed=0)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def models(attack, victim, data, ctx) -> dict[float, torch.nn.Module]:
    return {s: suspect.model for s, suspect in attack.run(victim, data, ctx)}


def distance(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        return float(sum((x - y).norm() ** 2 for x, y in zip(a.parameters(), b.parameters())) ** 0.5)


# -- the attacker's data -----------------------------------------------------------------------


def test_attacker_data_is_a_seeded_share_of_the_attacker_split(split_dm):
    whole = attacker_data(split_dm, seed=1)
    assert len(whole.train) == whole.split_size == 419 and whole.test is split_dm.test_set
    half = attacker_data(split_dm, fraction=0.5, seed=1)
    assert len(half.train) == 210 and int(half.indices.max()) < 419
    assert torch.equal(half.indices, attacker_data(split_dm, fraction=0.5, seed=1).indices)
    assert not torch.equal(half.indices, attacker_data(split_dm, fraction=0.5, seed=2).indices)
    # the images really are the attacker split's
    assert torch.equal(half.train.tensors()[0], split_dm.attacker_set.tensors(half.indices)[0])
    # trigger sources index the owner's share: any of them is accepted, none can be an attacker image
    assert len(attacker_data(split_dm, 10, exclude=range(len(split_dm.train_eval_set)), seed=0).train) == 10


def test_an_impossible_budget_or_no_split_is_a_one_line_config_error(split_dm, datamodule):
    with pytest.raises(ConfigError, match="attacker budget of 5000 images, but the attacker split of digits holds 419"):
        attacker_data(split_dm, 5000)
    with pytest.raises(ConfigError, match="data_fraction"):
        attacker_data(split_dm, fraction=1.5)
    with pytest.raises(ConfigError, match="no attacker split"):
        attacker_data(datamodule)  # the plain datamodule (attacker_size=0)
    with pytest.raises(ConfigError, match="data_fraction"):
        FTAL([1], data_fraction=0)


def test_choose_victims_takes_the_attacked_user_then_the_next_ones():
    users = ["u1", "u2", "u3", "u4"]
    assert choose_victims(users, None, 1) == ["u1"] and choose_victims(users, "u3", 3) == ["u3", "u4", "u1"]
    with pytest.raises(ConfigError, match="needs 5 users' models, but the key registers 4"):
        choose_victims(users, None, 5)
    with pytest.raises(ConfigError, match="not registered"):
        choose_victims(users, "eve", 1)


# -- fine-tuning ---------------------------------------------------------------------------------


def test_attacks_train_with_the_shared_module_and_the_wrt_optimizer():
    attack = FTAL([1])
    optimizer = attack.optimizer([nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"]
    assert issubclass(AttackModule, ClassifierModule) and attack.batch_size == 64


def test_ftll_changes_only_the_classifier(victim, data, ctx):
    before = state(victim)
    out = models(FTLL([0, 1]), victim, data, ctx)
    assert changed(before, state(victim)) == set()
    assert changed(before, state(out[0])) == set()
    assert changed(before, state(out[1])) == {"classifier.weight", "classifier.bias"}  # BN statistics frozen too


def test_rtal_reinitialises_the_last_layer_then_trains_everything(victim, data, ctx):
    before = state(victim)
    out = models(RTAL([0, 1]), victim, data, ctx)
    assert changed(before, state(out[0])) == {"classifier.weight", "classifier.bias"}  # before any training step
    trained = changed(before, state(out[1]))
    assert "features.0.weight" in trained and "classifier.weight" in trained
    assert changed(before, state(victim)) == set()


def test_rtal_head_reinitialises_every_fully_connected_layer_then_trains_everything(victim, data, ctx):
    before = state(victim)
    out = models(RTALHead([0, 1]), victim, data, ctx)
    head = {"features.14.weight", "features.14.bias", "classifier.weight", "classifier.bias"}  # SmallCNN: Linear after Flatten
    assert changed(before, state(out[0])) == head  # re-drawn before any step; the convolutions are the victim's
    trained = changed(before, state(out[1]))
    assert "features.0.weight" in trained and head <= trained
    assert changed(before, state(victim)) == set()


def test_ftal_trains_all_layers_cumulatively(victim, data, ctx):
    before = state(victim)
    out = models(FTAL([0, 1, 2]), victim, data, ctx)
    assert changed(before, state(out[0])) == set()
    assert {"features.0.weight", "classifier.weight"} <= changed(before, state(out[1]))
    assert "features.0.weight" in changed(state(out[1]), state(out[2]))
    assert len({id(m) for m in out.values()} | {id(victim)}) == 4
    assert changed(before, state(victim)) == set()


def test_learning_rate_axis_runs_each_rate_from_the_victim(victim, data, ctx):
    attack = FTAL([1e-2, 1e-4], axis="lr", epochs=1)
    out = models(attack, victim, data, ctx)
    assert list(out) == [1e-4, 1e-2] and attack.suspect_name(1e-4) == "ftal@lr=0.0001"
    assert distance(out[1e-2], victim) > 5 * distance(out[1e-4], victim) > 0
    with pytest.raises(ConfigError, match="axis"):
        FTAL([1], axis="batch")


# -- pruning ---------------------------------------------------------------------------------------


def test_prune_zeroes_the_rate_permanently_and_leaves_the_victim(victim, data, ctx):
    before = state(victim)
    out = models(Prune([0.3, 0.7]), victim, data, ctx)
    for rate, model in out.items():
        assert zero_fraction(model) == pytest.approx(rate, abs=0.01)
        assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
        assert not any(m._forward_pre_hooks for m in model.modules())
    assert zero_fraction(victim) < 0.01 and changed(before, state(victim)) == set()
    tuned = models(Prune([0.7], finetune_epochs=1), victim, data, ctx)[0.7]
    assert zero_fraction(tuned) >= 0.7 - 0.01  # fine-tuning did not revive pruned weights
    assert "classifier.weight" in changed(state(out[0.7]), state(tuned))


def test_prune_per_layer_zeroes_the_share_in_every_layer(victim, data, ctx):
    layered = models(Prune([0.6], scope="layer"), victim, data, ctx)[0.6]
    assert all(f == pytest.approx(0.6, abs=0.02) for f in layer_zero_fractions(layered))
    global_ = models(Prune([0.6]), victim, data, ctx)[0.6]
    spread = layer_zero_fractions(global_)
    assert max(spread) - min(spread) > 0.1  # the global ranking prunes layers unevenly; per layer does not


def test_fine_pruning_removes_the_least_activated_channels_of_the_last_conv(victim, data, ctx):
    x = data.train.tensors()[0]
    conv, bn = last_conv(victim)
    activation = mean_activation(victim, bn, x)
    expected = set(torch.argsort(activation)[: int(0.5 * len(activation))].tolist())
    out = models(FinePrune([0.5], finetune_epochs=1), victim, data, ctx)[0.5]
    conv2, bn2 = last_conv(out)
    dead = {c for c in range(conv2.out_channels) if conv2.weight[c].abs().sum() == 0}
    assert dead == expected  # the least activated, and they stay removed after fine-tuning
    assert all(bn2.weight[c] == 0 and bn2.bias[c] == 0 for c in dead)
    assert mean_activation(out, bn2, x)[sorted(dead)].abs().max() == 0  # those channels output nothing
    assert "classifier.weight" in changed(state(victim), state(out))  # and it was fine-tuned
    assert not any(k.endswith(("_orig", "_mask")) for k in out.state_dict())


# -- quantization ------------------------------------------------------------------------------------


def test_quantize_leaves_at_most_2_to_the_b_levels_per_output_channel(victim, data, ctx):
    before = state(victim)
    out = models(Quantize([4, 8]), victim, data, ctx)
    assert list(out) == [8, 4]  # weakest first: more bits
    for bits, model in out.items():
        for name, w in model.state_dict().items():
            if name.endswith("weight") and w.dim() in (2, 4):
                assert max(len(torch.unique(row)) for row in w.flatten(1)) <= 2**bits
                assert (w - before[name]).abs().max() <= before[name].abs().max() / (2 ** (bits - 1) - 1)
    assert changed(before, state(victim)) == set()


def test_onnx_int8_files_are_really_quantized_smaller_and_mostly_agree(victim, data, ctx, tmp_path):
    import onnx

    attack = OnnxInt8([0, 1, 2])
    x = data.test.tensors()[0]
    reference = predict_labels(victim, x)
    labels = {level: suspect.labels(x) for level, suspect in attack.run(victim, data, dataclasses.replace(ctx, output_dir=tmp_path))}
    assert torch.equal(labels[0], reference)  # the float ONNX model answers as the victim
    size = {lvl: info["bytes"] for lvl, info in attack.files.items()}
    assert size[1] < 0.5 * size[0] and size[2] < 0.5 * size[0]
    for level in (1, 2):
        assert (labels[level] == reference).float().mean() > 0.9
        assert attack.files[level]["int8_tensors"] > 0 and attack.files[level]["quant_ops"] > 0
    static_ops = {n.op_type for n in onnx.load(attack.files[2]["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= static_ops  # activations too, not only weights
    with pytest.raises(ConfigError, match="levels"):
        OnnxInt8([3])


def test_input_noise_is_applied_seeded_and_absent_at_std_zero(victim, data, ctx):
    x = data.test.tensors()[0][:200]
    clean = predict_labels(victim, x)
    suspects = dict(InputNoise([0, 0.5], seed=3).run(victim, data, ctx))
    assert suspects[0].model is victim and torch.equal(suspects[0].labels(x), clean)
    noisy = suspects[0.5].labels(x)
    assert (noisy != clean).float().mean() > 0.1
    assert torch.equal(dict(InputNoise([0.5], seed=3).run(victim, data, ctx))[0.5].labels(x), noisy)
    assert not torch.equal(dict(InputNoise([0.5], seed=4).run(victim, data, ctx))[0.5].labels(x), noisy)


def test_per_input_noise_answers_an_image_again_alike_and_a_jittered_one_afresh(victim, data, ctx):
    """The thief's answer to repeated reads: noise fixed per image (a cache). The same images get the
    same answers, even in another batch order; a verifier's secret jitter makes every read a new image."""
    from fingermarks.verification import read_inputs

    x = data.test.tensors()[0][:200]
    cached = dict(InputNoise([0.5], seed=3, per_input=True).run(victim, data, ctx))[0.5]
    fresh = dict(InputNoise([0.5], seed=3).run(victim, data, ctx))[0.5]
    first = cached.labels(x)
    assert (first != predict_labels(victim, x)).float().mean() > 0.1
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached.labels(x), first) and torch.equal(cached.labels(x[perm]), first[perm])
    assert not torch.equal(fresh.labels(x), fresh.labels(x))

    class Holder:  # read_inputs needs the key's triggers and secret only
        triggers = x
        secret_generator = staticmethod(lambda purpose: KeySecret.from_text("jitter").generator(purpose))

    jittered = read_inputs(Holder, 1, 4 / 255)
    assert torch.equal(read_inputs(Holder, 0, 4 / 255), x) and torch.equal(read_inputs(Holder, 3, 0.0), x)
    assert 0 < float((jittered - x).abs().max()) <= 4 / 255 + 1e-6 and float(jittered.min()) >= float(x.min())
    assert torch.equal(jittered, read_inputs(Holder, 1, 4 / 255))  # repeatable: from the key's secret
    assert (cached.labels(jittered) != first).float().mean() > 0.1  # a new image, fresh noise
    assert (predict_labels(victim, jittered) != predict_labels(victim, x)).float().mean() < 0.05


# -- adversarial training ----------------------------------------------------------------------------


def test_fgsm_adversarial_training_accumulates_examples_for_exactly_the_iterations(victim, data, ctx):
    trainers, makers = [], []

    def factory(**kwargs):
        trainers.append(QUIET_TRAINER(**kwargs))
        return trainers[-1]

    original = AccumulatingFGSM.__call__

    def spy(self, model, x, y):
        if self not in makers:
            makers.append(self)
        return original(self, model, x, y)

    AccumulatingFGSM.__call__ = spy
    try:
        out = models(AdvTrain([0.0, 0.3], iterations=3, batch_size=32), victim, data,
                     dataclasses.replace(ctx, trainer_factory=factory))
    finally:
        AccumulatingFGSM.__call__ = original
    assert [t.global_step for t in trainers] == [3, 3]  # one run per eps, 3 iterations each
    assert [len(m) for m in makers] == [3 * 32, 3 * 32]  # 32 new examples per iteration, all kept
    assert changed(state(out[0.0]), state(out[0.3]))
    x, y = data.train.tensors()
    adv = fgsm(victim, x[:64], y[:64], 0.1, (0.0, 1.0))
    assert 0.09 < (adv - x[:64]).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_pgd_stays_in_the_ball_and_beats_fgsm(victim, data, ctx):
    x, y = data.train.tensors()
    x, y = x[:128], y[:128]
    adv = pgd(victim, x, y, 0.1, 0.02, 10, (0.0, 1.0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = lambda z: float(nn.functional.cross_entropy(victim(z), y))  # noqa: E731
    with torch.no_grad():
        assert loss(adv) > loss(fgsm(victim, x, y, 0.1, (0.0, 1.0))) > loss(x)
    attack = AdvTrainPGD([0.1], epochs=2, steps=2, adv_fraction=0.25)
    out = models(attack, victim, dataclasses.replace(data, train=data.train.subset(range(64))), ctx)
    assert "features.0.weight" in changed(state(victim), state(out[0.1]))


# -- extraction ------------------------------------------------------------------------------------


def test_distill_trains_a_fresh_student_on_the_victims_labels(victim, data, ctx):
    x = data.train.tensors()[0]
    teacher = predict_labels(victim, x)
    out = models(Distill([0, 6], batch_size=32, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3)), victim, data, ctx)
    assert all(m is not victim and m.arch_name == victim.arch_name for m in out.values())
    agree = {s: float((predict_labels(m, x) == teacher).float().mean()) for s, m in out.items()}
    assert agree[6] > agree[0] + 0.2
    other = Distill([1], student=lambda **kw: VGG11(width=4, **kw)).make_student(victim, ctx)
    assert other.arch_name == "vgg11" and other.num_classes == 10


def test_extract_trains_a_fresh_student_per_query_budget(victim, data, ctx):
    from fingermarks.attacks import Extract

    x = data.train.tensors()[0]
    teacher = predict_labels(victim, x)
    student = lambda **kw: SmallCNN(width=4, **kw)  # noqa: E731
    for labels in ("hard", "soft"):
        attack = Extract([400, 20], labels=labels, student=student, steps=80, batch_size=32)
        out = list(attack.run(victim, data, ctx))
        assert [s for s, _ in out] == [20, 400] and out[1][1].name == "extract@queries=400"
        models_ = [m.model for _, m in out]
        assert models_[0] is not models_[1] and all(m is not victim and isinstance(m, SmallCNN) for m in models_)
        agree = float((predict_labels(models_[1], x) == teacher).float().mean())
        assert agree > 0.5, (labels, agree)  # 400 queries (256 images and shifted copies) teach the victim's labels
    with pytest.raises(ConfigError, match="hard or soft"):
        Extract([100], labels="probabilities")
    with pytest.raises(ConfigError, match="budgets must be >= 1"):
        Extract([0, 100])


def test_student_architectures_are_config_options(composed):
    from fingermarks.attacks import Extract

    for name, arch in (("small_cnn", "SmallCNN"), ("wide_cnn", "BNCNN"), ("resnet18", "ResNet18"), ("mlp", "MLP")):
        node = composed[f"attack=extract_soft attack/student={name}"]
        attack = make_attack(node)
        assert isinstance(attack, Extract) and attack.labels == "soft" and node.student._target_.endswith(arch)
    assert make_attack(composed["attack=distill attack/student=resnet18"]).student is not None
    assert make_attack(composed["attack=distill seed=7"]).student is None  # the victim's own architecture


# -- collusion ------------------------------------------------------------------------------------


class Constant(nn.Module):
    """A 'model' that answers one label per image: `answers[i]` for image i (by its first pixel index)."""

    def __init__(self, answers: torch.Tensor) -> None:
        super().__init__()
        self.answers, self.w = answers, nn.Parameter(torch.zeros(1))
        self.num_classes, self.input_shape = 10, (1, 8, 8)

    def forward(self, x):
        return nn.functional.one_hot(self.answers[x[:, 0, 0, 0].long()], 10).float() + self.w


def test_majority_vote_answers_the_majority_and_breaks_ties_at_random():
    n = 200
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 0, 0] = torch.arange(n).float()
    a, b, c = torch.full((n,), 1), torch.full((n,), 2), torch.full((n,), 3)
    b[:100] = 1  # on the first half two of three say 1
    three = VoteSuspect([Constant(a), Constant(b), Constant(c)], seed=0)
    labels = three.labels(x)
    assert (labels[:100] == 1).all()  # the majority
    assert set(labels[100:].tolist()) == {1, 2, 3} and (labels[100:] == 1).float().mean() < 0.6  # 3-way ties
    two = VoteSuspect([Constant(a), Constant(c)], seed=0).labels(x)
    assert set(two.tolist()) == {1, 3} and 0.3 < (two == 1).float().mean() < 0.7  # a coin between the two
    assert torch.equal(VoteSuspect([Constant(a), Constant(c)], seed=0).labels(x), two)  # seeded


def test_weight_averaging_and_the_collusion_attacks(victim, data, ctx):
    torch.manual_seed(1)
    other = SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4)
    other.load_state_dict(victim.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    mean = average_weights([victim, other])
    for name, value in mean.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (victim.state_dict()[name] + other.state_dict()[name]) / 2)
    third = average_weights([victim, victim])
    assert changed(state(third), state(victim)) == set()
    attack = CollusionAverage([2, 3])
    assert attack.victims == 3 and attack.colluders(2) == 2
    out = dict(attack.run([victim, other, victim], data, ctx))
    assert changed(state(out[2].model), state(mean)) == set()
    with pytest.raises(ConfigError, match="3 colluding models needed"):
        list(attack.run([victim, other], data, ctx))
    votes = dict(CollusionVote([2]).run([victim, other], data, ctx))
    assert isinstance(votes[2], VoteSuspect) and len(votes[2].models) == 2
    tuned = dict(CollusionFinetune([2], epochs=1).run([victim, other], data, ctx))[2].model
    assert "features.0.weight" in changed(state(mean), state(tuned))


# -- query evasion ------------------------------------------------------------------------------------


def test_detector_flags_about_one_percent_of_clean_images_and_most_noise(victim, split_dm, ctx):
    data = attacker_data(split_dm, seed=0)  # all 419 attacker images
    suspect = dict(Evasion([0.01], ae_epochs=40).run(victim, data, ctx))[0.01]
    clean = data.test.tensors()[0]
    assert float(suspect.flagged(clean).float().mean()) < 0.05  # calibrated at 1 % on held-out clean images
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(suspect.flagged(noise).float().mean()) > 0.9
    labels = suspect.labels(noise)  # flagged queries get random labels, not the model's
    assert (labels != predict_labels(victim, noise)).float().mean() > 0.5
    assert torch.equal(suspect.labels(clean)[~suspect.flagged(clean)], predict_labels(victim, clean)[~suspect.flagged(clean)])


# -- configs ------------------------------------------------------------------------------------


ATTACK_CONFIGS = sorted(p.stem for p in (CONF / "attack").glob("*.yaml"))


@pytest.fixture(scope="module")
def composed():
    """Every attack config (and a few command-line variants) composed in one Hydra context."""
    from hydra import compose, initialize_config_dir

    variants = [[f"attack={name}", "seed=7"] for name in ATTACK_CONFIGS] + [["attack=ftll", "attack/optimizer=adam"]]
    variants += [["attack=extract_soft", f"attack/student={s}"] for s in ("small_cnn", "wide_cnn", "resnet18", "mlp")]
    variants += [["attack=distill", "attack/student=resnet18"]]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return {" ".join(o): compose("config", overrides=o).attack for o in variants}


#: the attacks of the robustness sweep: each documents its default strength and where it comes from
SWEPT = OmegaConf.load(CONF / "experiment" / "robustness.yaml").hydra.sweeper.params.attack.split(",")


@pytest.mark.parametrize("name", [n for n in ATTACK_CONFIGS if n != "base"])
def test_every_attack_config_composes_from_the_base(name, composed):
    node = composed[f"attack={name} seed=7"]
    attack = make_attack(node)
    assert isinstance(attack, Attack) and attack.name == name and attack.seed == 7
    assert attack.default in attack.strengths and attack.data_fraction == 1.0 and attack.data_size is None
    assert {"batch_size", "data_fraction", "optimizer", "seed"} <= set(node)  # from base.yaml


def test_the_swept_attacks_are_registered_and_document_their_default():
    assert set(SWEPT) <= set(ATTACK_CONFIGS) and len(SWEPT) == 23
    for name in SWEPT:
        assert "Default strength" in (CONF / "attack" / f"{name}.yaml").read_text(), name
        assert any(name == a or name.startswith(a + "_") for a in ATTACKS), name


def test_base_and_presets(composed):
    attack = lambda overrides: make_attack(composed[overrides])  # noqa: E731
    with pytest.raises(ConfigError, match="names no attack"):
        attack("attack=base seed=7")
    ftal, adam = attack("attack=ftal seed=7"), attack("attack=ftal_adam seed=7")
    assert isinstance(ftal.optimizer([nn.Parameter(torch.zeros(1))]), torch.optim.SGD)
    assert isinstance(adam.optimizer([nn.Parameter(torch.zeros(1))]), torch.optim.Adam)
    assert (ftal.default, ftal.batch_size, ftal.axis) == (5, 64, "epochs") and adam.strengths == ftal.strengths
    lr = attack("attack=rtal_lr seed=7")
    assert lr.axis == "lr" and min(lr.strengths) == 1e-4 and max(lr.strengths) == 1e-2 and lr.epochs == 5
    assert attack("attack=ftll attack/optimizer=adam").optimizer.func is torch.optim.Adam
    assert attack("attack=collude_vote seed=7").victims == 3
    fgsm_, fgsm_adam = attack("attack=adv_train seed=7"), attack("attack=adv_train_adam seed=7")
    assert (fgsm_.iterations, fgsm_.batch_size, fgsm_.default, max(fgsm_.strengths)) == (270, 128, 0.1, 0.3)
    # the paper's AT with the WRT's victim optimiser by default; Adam 1e-3 is its named strong end
    assert fgsm_.optimizer.func is torch.optim.SGD and fgsm_adam.optimizer.func is torch.optim.Adam
    assert fgsm_adam.name == "adv_train_adam" and fgsm_adam.strengths == fgsm_.strengths


def test_training_attacks_never_modify_the_victim(victim, data, ctx):
    before = state(victim)
    for attack in (FTAL([1]), Distill([1]), AdvTrain([0.1], iterations=1, batch_size=32), FinePrune([0.5], finetune_epochs=1)):
        list(attack.run(victim, data, ctx))
    assert changed(before, state(victim)) == set()


def test_rtal_head_on_a_model_without_a_flatten_re_draws_the_final_layer(data, ctx):
    class Plain(nn.Module):  # a classifier without a Sequential `features` to split
        def __init__(self) -> None:
            super().__init__()
            self.body, self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()), nn.Linear(16, 10)

        def forward(self, x):
            return self.classifier(self.body(x))

    torch.manual_seed(0)
    model = Plain()
    before = state(model)
    RTALHead([0]).prepare(model)
    assert changed(before, state(model)) == {"classifier.weight", "classifier.bias"}
