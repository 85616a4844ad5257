"""Each attack, a step or two on digits with a tiny SmallCNN: does it change what it should, and only that?"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch
from conftest import QUIET_TRAINER
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fingermarks.attacks import ATTACKS, FTAL, FTLL, RTAL, AdvTrain, Distill, InputNoise, Prune, Quantize, attacker_data
from fingermarks.attacks.adv_train import fgsm
from fingermarks.attacks.prune import zero_fraction
from fingermarks.metrics import predict_labels
from fingermarks.models import VGG11

CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def victim(tiny_classifier):
    return tiny_classifier


@pytest.fixture(scope="module")
def data(datamodule):
    return attacker_data(datamodule, 256, exclude=range(0, 40), seed=0)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def models(attack, victim, data, ctx) -> dict[float, torch.nn.Module]:
    return {s: suspect.model for s, suspect in attack.run(victim, data, ctx)}


def test_attacker_data_is_seeded_sized_and_avoids_trigger_sources(datamodule):
    data = attacker_data(datamodule, 300, exclude=range(0, 500), seed=1)
    assert len(data.train) == 300 and data.test is datamodule.test_set
    assert int(data.indices.min()) >= 500
    assert torch.equal(data.indices, attacker_data(datamodule, 300, exclude=range(0, 500), seed=1).indices)
    assert not torch.equal(data.indices, attacker_data(datamodule, 300, exclude=range(0, 500), seed=2).indices)
    with pytest.raises(ValueError, match="not trigger sources"):
        attacker_data(datamodule, len(datamodule.train_set), exclude=[0], seed=0)


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


def test_ftal_trains_all_layers_cumulatively(victim, data, ctx):
    before = state(victim)
    out = models(FTAL([0, 1, 2]), victim, data, ctx)
    assert changed(before, state(out[0])) == set()
    assert {"features.0.weight", "classifier.weight"} <= changed(before, state(out[1]))
    assert "features.0.weight" in changed(state(out[1]), state(out[2]))
    assert len({id(m) for m in out.values()} | {id(victim)}) == 4
    assert changed(before, state(victim)) == set()


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


def test_input_noise_is_applied_seeded_and_absent_at_std_zero(victim, data, ctx):
    x = data.test.tensors()[0][:200]
    clean = predict_labels(victim, x)
    suspects = dict(InputNoise([0, 0.5], seed=3).run(victim, data, ctx))
    assert suspects[0].model is victim and torch.equal(suspects[0].labels(x), clean)
    noisy = suspects[0.5].labels(x)
    assert (noisy != clean).float().mean() > 0.1
    assert torch.equal(dict(InputNoise([0.5], seed=3).run(victim, data, ctx))[0.5].labels(x), noisy)
    assert not torch.equal(dict(InputNoise([0.5], seed=4).run(victim, data, ctx))[0.5].labels(x), noisy)


def test_adv_train_runs_exactly_the_requested_iterations(victim, data, ctx):
    trainers = []

    def factory(**kwargs):
        trainers.append(QUIET_TRAINER(**kwargs))
        return trainers[-1]

    out = models(AdvTrain([0, 2, 3], eps=0.1, batch_size=64), victim, data, dataclasses.replace(ctx, trainer_factory=factory))
    assert len(trainers) == 1 and trainers[0].global_step == 3
    assert changed(state(victim), state(out[0])) == set()
    assert "features.0.weight" in changed(state(out[2]), state(out[3]))
    x, y = data.train.tensors()
    adv = fgsm(victim, x[:64], y[:64], 0.1, (0.0, 1.0))
    assert 0.09 < (adv - x[:64]).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_distill_trains_a_fresh_student_on_the_victims_labels(victim, data, ctx):
    x = data.train.tensors()[0]
    teacher = predict_labels(victim, x)
    out = models(Distill([0, 6], batch_size=32), victim, data, ctx)
    assert all(m is not victim and m.arch_name == victim.arch_name for m in out.values())
    agree = {s: float((predict_labels(m, x) == teacher).float().mean()) for s, m in out.items()}
    assert agree[6] > agree[0] + 0.2
    other = Distill([1], student=functools.partial(VGG11, width=4)).make_student(victim, ctx)
    assert other.arch_name == "vgg11" and other.num_classes == 10


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_config_instantiates_with_a_documented_default(name):
    cfg = OmegaConf.create({"seed": 7, "attack": OmegaConf.load(CONF / f"{name}.yaml")})
    assert cfg.attack.data_size == 2000
    attack = instantiate(cfg.attack)
    assert type(attack) is ATTACKS[name] and attack.seed == 7
    assert attack.default in attack.strengths and attack.axis in {"epochs", "rate", "std", "iterations", "bits"}
    assert "Default strength" in (CONF / f"{name}.yaml").read_text()


def test_training_attacks_never_modify_the_victim(victim, data, ctx):
    before = state(victim)
    for attack in (FTAL([1]), Distill([1]), AdvTrain([1], batch_size=64)):
        list(attack.run(victim, data, ctx))
    assert changed(before, state(victim)) == set()
