"""Tests for fingermarks.embedding: DeepFool, the dynamic-ratio callback, the epoch data and a short real fit."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF
from fingermarks.data import DigitsDataModule
from fingermarks.data.digits import load_digits_tensors
from fingermarks.embedding import DynamicRatio, EmbeddingData, EmbeddingModule, deepfool, stop_reason
from fingermarks.embedding.module import distillation
from fingermarks.errors import ConfigError, EmbeddingError
from fingermarks.key import Key, host_fingerprint
from fingermarks.metrics import predict_labels
from fingermarks.models import SmallCNN

torch.set_num_threads(1)

# -- DeepFool ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def trained_mlp() -> nn.Module:
    x, y = load_digits_tensors()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x[:1200]), y[:1200]).backward()
        opt.step()
    return model


def test_deepfool_changes_labels_with_a_small_step() -> None:
    model = trained_mlp().train()
    x = load_digits_tensors()[0][1200:1264]
    before = model(x).argmax(1)
    adv = deepfool(model, x)
    assert model.training  # the caller's mode is restored
    assert adv.shape == x.shape and not adv.requires_grad
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    after = model(adv).argmax(1)
    assert float((after != before).float().mean()) >= 0.9
    # the step is small: random directions of the same length change (almost) no label
    step = (adv - x).flatten(1).norm(dim=1)
    assert float(step.mean()) < 0.5 * float(x.flatten(1).norm(dim=1).mean())
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * step.view(-1, 1, 1, 1)
    assert float((model((x + noise).clamp(0, 1)).argmax(1) != before).float().mean()) <= 0.2


# -- DynamicRatio on a hand-set linear model --------------------------------------------

N_TRIGGERS = 6
TARGETS = torch.tensor([3, 5, 1, 2, 7, 0])


def triggers() -> torch.Tensor:
    """Trigger t is the one-hot image of pixel t, so column t of a linear layer is its logits."""
    return torch.eye(64)[:N_TRIGGERS].view(N_TRIGGERS, 1, 8, 8)


def table_model(target_logit: list[float]) -> nn.Module:
    """Logits of trigger t: `target_logit[t]` on its target, 1.0 on class (target + 1) % 10, 0 elsewhere."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    with torch.no_grad():
        w = model[1].weight
        w.zero_()
        for t, (target, value) in enumerate(zip(TARGETS.tolist(), target_logit)):
            w[target, t] = value
            w[(target + 1) % 10, t] = 1.0
    return model


def set_target_logit(model: nn.Module, t: int, value: float) -> None:
    with torch.no_grad():
        model[1].weight[TARGETS[t], t] = value


MATCHED, WEAK, MISSED = 10.0, 1.2, -1.0  # target prob ~1, matched with prob ~0.13, not top-1


class Stubs:
    """A trainer and a LightningModule reduced to what the callback reads and writes."""

    def __init__(self, model: nn.Module) -> None:
        self.logged: dict[str, float] = {}
        self.trainer = SimpleNamespace(current_epoch=0, should_stop=False, callback_metrics={}, ckpt_path=None,
                                       strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
        self.module = SimpleNamespace(model=model, device=torch.device("cpu"),
                                      log_dict=lambda metrics, **kwargs: self.logged.update(metrics))

    def fit_start(self, ratio: DynamicRatio) -> None:
        ratio.on_fit_start(self.trainer, self.module)

    def epoch_end(self, ratio: DynamicRatio, epoch: int) -> dict:
        self.trainer.current_epoch = epoch
        ratio.on_train_epoch_end(self.trainer, self.module)
        return ratio.history[-1]


def ratio_for(**kwargs) -> DynamicRatio:
    return DynamicRatio(triggers(), TARGETS, **{"adversarial": False, "readmit_prob": 0.5, **kwargs})


def test_fit_start_leaves_out_matched_triggers_and_readmits_weak_ones() -> None:
    model = table_model([MATCHED, WEAK, MISSED, MISSED, MATCHED, MISSED])
    ratio, stubs = ratio_for(), Stubs(model)
    stubs.fit_start(ratio)
    # trigger 1 gives its target, but with a probability under readmit_prob: it is trained on
    assert ratio.active.tolist() == [False, True, True, True, False, True]
    row = ratio.history[0]
    assert (row["epoch"], row["p"], row["matched"], row["active"], row["done"]) == (0, 0.0, 3, 4, False)
    assert row["min_target_prob"] < 0.1  # the missed triggers
    assert len(ratio.history) == 1
    x, y = ratio.trigger_batch()
    assert torch.equal(x, triggers()[ratio.active]) and torch.equal(y, TARGETS[ratio.active])
    assert not stubs.trainer.should_stop


def test_a_matched_trigger_rejoins_when_its_target_probability_falls() -> None:
    model = table_model([MATCHED, MATCHED, MISSED, MATCHED, MATCHED, MATCHED])
    ratio, stubs = ratio_for(), Stubs(model)
    stubs.fit_start(ratio)
    assert ratio.active.tolist() == [False, False, True, False, False, False]
    set_target_logit(model, 0, WEAK)  # still top-1, but its probability fell below readmit_prob
    set_target_logit(model, 2, MATCHED)  # learned: leaves the training set
    row = stubs.epoch_end(ratio, 0)
    assert ratio.active.tolist() == [True, False, False, False, False, False]
    assert row["matched"] == N_TRIGGERS and row["active"] == 1 and not row["done"]
    set_target_logit(model, 0, MATCHED)
    stubs.epoch_end(ratio, 1)
    assert not bool(ratio.active.any())
    assert ratio.trigger_batch()[0].shape == (0, 1, 8, 8)


def test_p_grows_by_dp_up_to_p_max() -> None:
    ratio, stubs = ratio_for(p0=0.1, dp=0.15, p_max=0.5), Stubs(table_model([MISSED] * N_TRIGGERS))
    stubs.fit_start(ratio)
    used = [stubs.epoch_end(ratio, e)["p"] for e in range(5)]
    assert used == pytest.approx([0.1, 0.25, 0.4, 0.5, 0.5])
    assert ratio.p == pytest.approx(0.5)
    assert [row["epoch"] for row in ratio.history] == [0, 1, 2, 3, 4, 5]
    assert stubs.logged["embed/p"] == pytest.approx(0.5) and stubs.logged["embed/active"] == N_TRIGGERS
    with pytest.raises(ValueError, match="p0"):
        DynamicRatio(triggers(), TARGETS, p0=0.6, p_max=0.5)


def test_done_once_every_trigger_matches_with_done_prob() -> None:
    model = table_model([MATCHED] * (N_TRIGGERS - 1) + [WEAK])
    ratio, stubs = ratio_for(done_prob=0.6), Stubs(model)
    stubs.fit_start(ratio)
    assert ratio.history[-1]["matched"] == N_TRIGGERS and not ratio.history[-1]["done"]
    assert not stubs.trainer.should_stop
    set_target_logit(model, N_TRIGGERS - 1, MATCHED)
    assert stubs.epoch_end(ratio, 0)["done"] and stubs.trainer.should_stop
    assert stop_reason(ratio.history) == "targets"
    already = Stubs(model)
    ratio_for(done_prob=0.6).on_fit_start(already.trainer, already.module)
    assert already.trainer.should_stop  # nothing to embed: stop before the first epoch


def test_a_plateau_ends_a_user_short_of_done_prob() -> None:
    """Every trigger matched, the weakest above plateau_prob but under done_prob and no longer rising: done after
    plateau_epochs trained epochs (the starting weights are not one); while it rises, or under plateau_prob, not."""
    weak = 3.2  # the last trigger's target with probability ~0.70: matched, under done_prob 0.9
    model = table_model([MATCHED] * (N_TRIGGERS - 1) + [weak])
    ratio, stubs = ratio_for(done_prob=0.9, readmit_prob=0.9, plateau_epochs=2, plateau_prob=0.5, plateau_delta=0.01), Stubs(model)
    stubs.fit_start(ratio)
    rows = [stubs.epoch_end(ratio, e) for e in range(2)]
    assert not any(r["done"] or r["stalled"] for r in rows)  # epoch 2 is compared with epoch 0: not yet
    row = stubs.epoch_end(ratio, 2)
    assert row["done"] and row["stalled"] and stubs.trainer.should_stop and 0.69 < row["min_target_prob"] < 0.71
    assert stop_reason(ratio.history) == "plateau" and stop_reason(ratio.history[:-1]) == "max_epochs"
    assert stop_reason([]) is None  # no history (a ddp_spawn worker kept it)
    # still rising by more than plateau_delta per plateau_epochs: trains on
    rising, stubs = ratio_for(done_prob=0.9, readmit_prob=0.9, plateau_epochs=2, plateau_prob=0.5), Stubs(table_model([MATCHED] * (N_TRIGGERS - 1) + [weak]))
    stubs.fit_start(rising)
    for e in range(5):
        set_target_logit(stubs.module.model, N_TRIGGERS - 1, weak + 0.2 * (e + 1))
        assert not stubs.epoch_end(rising, e)["done"]
    # under plateau_prob, or off (plateau_epochs 0): never stalled
    for kwargs in ({"plateau_epochs": 2, "plateau_prob": 0.75}, {"plateau_epochs": 0}):
        flat, stubs = ratio_for(done_prob=0.9, readmit_prob=0.9, **kwargs), Stubs(table_model([MATCHED] * (N_TRIGGERS - 1) + [weak]))
        stubs.fit_start(flat)
        assert not any(stubs.epoch_end(flat, e)["done"] for e in range(6))
    # a trigger not matched: never stalled, whatever its probability does
    missed, stubs = ratio_for(done_prob=0.9, plateau_epochs=1, plateau_prob=0.0), Stubs(table_model([MATCHED] * (N_TRIGGERS - 1) + [MISSED]))
    stubs.fit_start(missed)
    assert not any(stubs.epoch_end(missed, e)["done"] for e in range(4))
    with pytest.raises(ValueError, match="plateau_epochs"):
        ratio_for(plateau_epochs=-1)


def test_the_plateau_rule_as_a_pure_function() -> None:
    """`plateaued`, which DynamicRatio and benchmarks/plateau_replay.py both decide with, on weakest-probability lists
    (the starting weights' first): plateau_epochs trained epochs must lie between the compared values."""
    from fingermarks.embedding import plateaued

    rule = {"plateau_epochs": 2, "plateau_prob": 0.6, "plateau_delta": 0.02}
    assert not plateaued([0.5, 0.65, 0.66], True, **rule)  # two epochs, but the start is not a trained epoch
    assert plateaued([0.5, 0.65, 0.66, 0.665], True, **rule)  # 0.665 - 0.65 < 0.02
    assert not plateaued([0.5, 0.6, 0.63, 0.625], True, **rule)  # rose 0.025 over two epochs
    assert not plateaued([0.5, 0.55, 0.56, 0.565], True, **rule)  # under plateau_prob
    assert not plateaued([0.5, 0.65, 0.66, 0.665], False, **rule)  # a trigger unmatched
    assert not plateaued([0.5, 0.65, 0.66, 0.665], True, **dict(rule, plateau_epochs=0))  # off


def test_adversarial_neighbours_join_the_active_triggers() -> None:
    model = table_model([MATCHED, MISSED, MATCHED, MISSED, MISSED, MATCHED])
    ratio, stubs = ratio_for(adversarial=True), Stubs(model)
    stubs.fit_start(ratio)
    active = ratio.active
    assert active.tolist() == [False, True, False, True, True, False]
    assert ratio.neighbours.shape == (3, 1, 8, 8)
    assert torch.equal(ratio.neighbour_targets, TARGETS[active])
    assert not torch.equal(ratio.neighbours, triggers()[active])  # moved across a boundary
    x, y = ratio.trigger_batch()
    assert len(x) == 6 and torch.equal(y, TARGETS[active].repeat(2))


def test_state_dict_holds_numbers_and_a_resume_recomputes_the_neighbours() -> None:
    model = table_model([MATCHED, MISSED, WEAK, MISSED, MATCHED, MISSED])
    ratio, stubs = ratio_for(adversarial=True), Stubs(model)
    stubs.fit_start(ratio)
    stubs.epoch_end(ratio, 0)
    state = ratio.state_dict()
    assert set(state) == {"p", "active", "history", "set_up"}  # no neighbours: near-copies of the triggers
    fresh = ratio_for(adversarial=True)
    fresh.load_state_dict(state)
    assert fresh.p == ratio.p != fresh.p0
    assert torch.equal(fresh.active, ratio.active)
    assert fresh.history == ratio.history
    assert len(fresh.neighbours) == 0
    resumed = Stubs(model)
    resumed.trainer.ckpt_path = "embed.ckpt"  # current_epoch is still 0 at on_fit_start of a resumed fit
    resumed.fit_start(fresh)
    assert fresh.p == ratio.p and fresh.history == ratio.history  # not reset
    assert len(fresh.neighbours) == int(ratio.active.sum()) > 0
    for a, b in zip(fresh.trigger_batch(), ratio.trigger_batch()):
        assert torch.equal(a, b)


# -- EmbeddingData and a short real fit on digits ----------------------------------------


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, eval_batch_size=256)
    dm.setup()
    return dm


def test_epoch_data_reflects_p_and_the_active_triggers(digits: DigitsDataModule) -> None:
    ratio = ratio_for(p0=0.1, adversarial=True)
    Stubs(table_model([MATCHED, MISSED, WEAK, MISSED, MATCHED, MISSED])).fit_start(ratio)
    active = int(ratio.active.sum())
    assert active == 4 and len(ratio.neighbours) == active
    data = EmbeddingData(digits, ratio, seed=0, batch_size=32, trigger_repeat=3)
    n_train = len(digits.train_set)
    loader = data.train_dataloader()
    assert len(loader.dataset) == round(0.1 * n_train) + 3 * 2 * active
    assert loader.batch_size == 32
    labels = [loader.dataset[k][1] for k in range(len(loader.dataset))]
    trigger_part = torch.stack(labels[round(0.1 * n_train):])
    assert torch.equal(trigger_part, TARGETS[ratio.active].repeat(2).repeat(3))
    ratio.p, ratio.active[:] = 0.3, True
    ratio.neighbours, ratio.neighbour_targets = ratio.neighbours[:0], ratio.neighbour_targets[:0]
    assert len(data.train_dataloader().dataset) == round(0.3 * n_train) + 3 * N_TRIGGERS


def test_clean_per_trigger_caps_the_clean_images_of_an_epoch(digits: DigitsDataModule) -> None:
    ratio = ratio_for(p0=0.3, adversarial=True)
    Stubs(table_model([MATCHED, MISSED, WEAK, MISSED, MATCHED, MISSED])).fit_start(ratio)
    trigger_samples = 3 * 2 * int(ratio.active.sum())  # repeat x (trigger + neighbour)
    n_clean = round(0.3 * len(digits.train_set))

    def epoch_size(**cap) -> int:
        return len(EmbeddingData(digits, ratio, seed=0, batch_size=8, trigger_repeat=3, **cap).train_dataloader().dataset)

    assert epoch_size() == n_clean + trigger_samples
    assert epoch_size(clean_per_trigger=2) == 3 * trigger_samples < n_clean + trigger_samples
    assert epoch_size(clean_per_trigger=0) == 8 + trigger_samples  # never less than one batch of clean images
    assert epoch_size(clean_per_trigger=1e6) == n_clean + trigger_samples  # p still bounds it
    first = EmbeddingData(digits, ratio, seed=0, clean_per_trigger=2).train_dataloader().dataset
    again = EmbeddingData(digits, ratio, seed=0, clean_per_trigger=2).train_dataloader().dataset
    assert torch.equal(torch.stack([first[k][0] for k in range(20)]), torch.stack([again[k][0] for k in range(20)]))
    with pytest.raises(ValueError, match="clean_per_trigger"):
        EmbeddingData(digits, ratio, seed=0, clean_per_trigger=-1)


def test_noise_copies_cover_every_trigger_with_its_target(digits: DigitsDataModule) -> None:
    ratio = ratio_for(p0=0.0, adversarial=False)
    Stubs(table_model([MATCHED, MISSED, WEAK, MISSED, MATCHED, MISSED])).fit_start(ratio)
    active = int(ratio.active.sum())
    data = EmbeddingData(digits, ratio, seed=0, trigger_repeat=1, noise_copies=3, noise_std=0.3)
    dataset = data.train_dataloader().dataset
    assert len(dataset) == active + 3 * N_TRIGGERS  # matched triggers come back too, only as noisy copies
    noisy = torch.stack([dataset[k][0] for k in range(active, len(dataset))])
    labels = torch.stack([dataset[k][1] for k in range(active, len(dataset))])
    assert torch.equal(labels, TARGETS.repeat(3))
    shift = (noisy - ratio.triggers.repeat(3, 1, 1, 1)).flatten(1).std(1)
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    assert 0 < float(shift.max()) <= 0.3 * 1.5 and float(shift.min()) < float(shift.max())  # stds drawn from [0, 0.3]
    again = EmbeddingData(digits, ratio, seed=0, trigger_repeat=1, noise_copies=3, noise_std=0.3).train_dataloader().dataset
    assert torch.equal(noisy, torch.stack([again[k][0] for k in range(active, len(again))]))
    with pytest.raises(ValueError, match="noise_copies"):
        EmbeddingData(digits, ratio, seed=0, noise_copies=-1)


def test_distillation_is_the_tempered_kl_on_the_rows_with_a_teacher() -> None:
    torch.manual_seed(0)
    logits, teacher = torch.randn(5, 10), torch.randn(5, 10)
    teacher[[1, 3]] = float("nan")  # trigger rows: no teacher
    t = 3.0
    kept = [0, 2, 4]
    expected = sum(float((F.softmax(teacher[k] / t, 0) * (F.log_softmax(teacher[k] / t, 0) - F.log_softmax(logits[k] / t, 0))).sum())
                   for k in kept) * t * t / 5
    assert float(distillation(logits, teacher, t)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation(teacher[kept], teacher[kept], t)) == pytest.approx(0.0, abs=1e-6)  # the host itself
    assert float(distillation(logits, torch.full_like(teacher, float("nan")), t)) == 0.0
    logits.requires_grad_(True)
    distillation(logits, teacher, t).backward()
    assert torch.all(logits.grad[[1, 3]] == 0) and torch.all(logits.grad[kept].abs().sum(1) > 0)


def test_distill_adds_the_host_term_on_clean_rows_only() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    teacher = torch.randn(6, 10)
    teacher[:2] = float("nan")
    plain = EmbeddingModule(model, 10, torch.optim.Adam)
    distilled = EmbeddingModule(model, 10, torch.optim.Adam, distill=0.5, distill_temperature=2.0)
    with torch.no_grad():
        term = distillation(model(x), teacher, 2.0)
    assert float(term) > 0
    assert torch.allclose(plain.training_step((x, y, teacher), 0), plain.training_step((x, y), 0))  # weight 0: no term
    assert torch.allclose(distilled.training_step((x, y, teacher), 0), plain.training_step((x, y), 0) + 0.5 * term, rtol=1e-5)
    with pytest.raises(ValueError, match="distill"):
        EmbeddingModule(model, 10, torch.optim.Adam, distill=-1.0)


def test_teacher_rows_follow_the_chosen_clean_images(digits: DigitsDataModule) -> None:
    ratio = ratio_for(p0=0.1, adversarial=False)
    Stubs(table_model([MATCHED, MISSED, WEAK, MISSED, MATCHED, MISSED])).fit_start(ratio)
    x, y = digits.train_eval_set.tensors()
    teacher = torch.arange(len(x), dtype=torch.float32).view(-1, 1).repeat(1, 10)  # row k holds k: which image it was
    data = EmbeddingData(digits, ratio, seed=0, trigger_repeat=2, noise_copies=1, noise_std=0.1, clean=(x, y), teacher=teacher)
    dataset = data.train_dataloader().dataset
    n_clean = round(0.1 * len(x))
    for k in range(n_clean):
        image, label, row = dataset[k]
        index = int(row[0])
        assert torch.equal(image, x[index]) and int(label) == int(y[index])
    trigger_rows = torch.stack([dataset[k][2] for k in range(n_clean, len(dataset))])
    assert len(trigger_rows) == 2 * int(ratio.active.sum()) + N_TRIGGERS and bool(trigger_rows.isnan().all())
    with pytest.raises(ValueError, match="needs `clean`"):
        EmbeddingData(digits, ratio, seed=0, teacher=teacher)
    with pytest.raises(ValueError, match="rows for"):
        EmbeddingData(digits, ratio, seed=0, clean=(x, y), teacher=teacher[:5])


def test_epoch_data_is_reproducible_per_seed(digits: DigitsDataModule) -> None:
    ratio = ratio_for(p0=0.05)

    def first_images(seed: int) -> torch.Tensor:
        dataset = EmbeddingData(digits, ratio, seed=seed).train_dataloader().dataset
        return torch.stack([dataset[k][0] for k in range(10)])

    assert torch.equal(first_images(3), first_images(3))
    assert not torch.equal(first_images(3), first_images(4))


class EpochSizes(L.Callback):
    """Records the size of the training set Lightning actually iterates each epoch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sizes.append(len(trainer.train_dataloader.dataset))


def test_short_embedding_fit_on_digits() -> None:
    L.seed_everything(0, workers=True)
    digits = DigitsDataModule(batch_size=64, eval_batch_size=256)  # set up by the fit itself
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4)
    x, y = load_digits_tensors()
    trig, targets = x[:8].clone(), (y[:8] + 1) % 10
    ratio = DynamicRatio(trig, targets, p0=0.1, dp=0.1, p_max=0.25, readmit_prob=0.5, done_prob=0.99)
    data = EmbeddingData(digits, ratio, seed=0, batch_size=64, trigger_repeat=2)
    module = EmbeddingModule(model, 10, functools.partial(torch.optim.Adam, lr=3e-3))
    sizes = EpochSizes()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, callbacks=[ratio, sizes], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    history = ratio.history
    assert all({"epoch", "p", "matched", "active", "done"} <= set(row) for row in history)
    assert [row["epoch"] for row in history] == list(range(len(history)))
    assert history[0]["p"] == 0.0 and history[1]["p"] == pytest.approx(0.1)
    for prev, row in zip(history[1:], history[2:]):
        assert row["p"] == pytest.approx(min(prev["p"] + 0.1, 0.25))
    assert len(history) == 4 or history[-1]["done"]  # three epochs unless every trigger matched earlier
    assert all(0 <= row["matched"] <= 8 and "clean_acc" in row for row in history[1:])
    # each epoch trained on the state decided at the end of the previous one (the reload works)
    n_train = len(digits.train_set)
    expected = [round(history[e + 1]["p"] * n_train) + 2 * 2 * history[e]["active"] for e in range(len(sizes.sizes))]
    assert sizes.sizes == expected
    assert trainer.callback_metrics["embed/p"] == pytest.approx(history[-1]["p"])


def test_anchor_adds_the_l2_sp_drift_from_the_start_weights() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4).eval()  # no dropout: two calls must agree
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    plain = EmbeddingModule(model, 10, torch.optim.Adam)
    anchored = EmbeddingModule(model, 10, torch.optim.Adam, anchor=2.0)
    assert torch.allclose(anchored.training_step((x, y), 0), plain.training_step((x, y), 0))  # no drift yet
    with torch.no_grad():
        first = next(model.parameters())
        first.add_(0.1)
    drift = 0.01 * first.numel()
    assert torch.allclose(anchored.training_step((x, y), 0), plain.training_step((x, y), 0) + 0.5 * 2.0 * drift, rtol=1e-4)


def test_scheduler_is_stepped_per_epoch_and_optional() -> None:
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4)
    assert isinstance(EmbeddingModule(model, 10, torch.optim.Adam).configure_optimizers(), torch.optim.Adam)
    decaying = EmbeddingModule(model, 10, functools.partial(torch.optim.Adam, lr=1e-3),
                               scheduler=functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5))
    conf = decaying.configure_optimizers()
    conf["lr_scheduler"].step()
    assert conf["optimizer"].param_groups[0]["lr"] == pytest.approx(5e-4)


def test_user_model_cache_recipe_ignores_the_decision_settings() -> None:
    from fingermarks.pipeline import embedding_recipe

    method = OmegaConf.load(CONF / "method" / "fingermarks.yaml")
    read_more = OmegaConf.merge(method, {"decision": {"reads": 60, "alpha": 1e-6}})
    slower = OmegaConf.merge(method, {"embedding": {"optimizer": {"lr": 1e-4}}})
    assert embedding_recipe(read_more) == embedding_recipe(method)  # a decision sweep reuses the user models
    assert embedding_recipe(slower) != embedding_recipe(method)
    assert "decision" not in embedding_recipe(method) and "embedding" in embedding_recipe(method)


def test_robust_eps_also_trains_each_batch_as_its_fgsm_examples() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8), width=4).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    plain = EmbeddingModule(model, 10, torch.optim.Adam)
    robust = EmbeddingModule(model, 10, torch.optim.Adam, robust_eps=0.1)
    grad = torch.autograd.functional.jacobian(lambda v: F.cross_entropy(model(v), y), x)
    adv = (x + 0.1 * grad.sign()).clamp(0, 1)
    expected = F.cross_entropy(model(torch.cat([x, adv])), torch.cat([y, y]))
    assert torch.allclose(robust.training_step((x, y), 0), expected, rtol=1e-5)
    # FGSM goes up the loss, so the robust loss exceeds the plain one on the same batch
    assert float(robust.training_step((x, y), 0)) > float(plain.training_step((x, y), 0))
    with pytest.raises(ValueError, match="robust_eps"):
        EmbeddingModule(model, 10, torch.optim.Adam, robust_eps=-0.1)


# -- checkpoints: a resumed fit continues, and no key material is stored ------------------


def fit_parts(host: nn.Module, datamodule, trig: torch.Tensor, targets: torch.Tensor):
    """Callback, data and module of an embedding that never stops early (done_prob 1)."""
    ratio = DynamicRatio(trig, targets, p0=0.1, dp=0.1, p_max=0.5, readmit_prob=0.5, done_prob=1.0)
    data = EmbeddingData(datamodule, ratio, seed=0, batch_size=64, trigger_repeat=2)
    module = EmbeddingModule(copy.deepcopy(host).train(), 10, functools.partial(torch.optim.Adam, lr=3e-3))
    return ratio, data, module


def quiet_fit_trainer(max_epochs: int, callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     reload_dataloaders_every_n_epochs=1, **kwargs)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory, datamodule, tiny_classifier):
    """Two epochs of a real embedding on digits, checkpointed after each (last.ckpt: after epoch 2)."""
    L.seed_everything(0, workers=True)
    x, y = datamodule.train_eval_set.tensors(torch.arange(8))
    trig, targets = x.clone(), (y + 1) % 10
    folder = tmp_path_factory.mktemp("embed-ckpt")
    ratio, data, module = fit_parts(tiny_classifier, datamodule, trig, targets)
    trainer = quiet_fit_trainer(2, [ratio, ModelCheckpoint(dirpath=folder, save_last=True)], default_root_dir=folder)
    trainer.fit(module, datamodule=data)
    assert not trainer.should_stop
    return SimpleNamespace(folder=folder, ratio=ratio, triggers=trig, targets=targets)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_resumed_embedding_continues_with_the_restored_state(checkpointed, datamodule, tiny_classifier) -> None:
    first = checkpointed.ratio
    assert [row["epoch"] for row in first.history] == [0, 1, 2]
    # a new process: fresh callback and host weights, everything else from the checkpoint
    ratio, data, module = fit_parts(tiny_classifier, datamodule, checkpointed.triggers, checkpointed.targets)
    sizes = EpochSizes()
    checkpoint = ModelCheckpoint(dirpath=checkpointed.folder, filename="resumed-{epoch}")  # as in the first fit
    trainer = quiet_fit_trainer(4, [ratio, sizes, checkpoint], default_root_dir=checkpointed.folder)
    trainer.fit(module, datamodule=data, ckpt_path=checkpointed.folder / "last.ckpt")
    history = ratio.history
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    assert history[:3] == first.history
    assert [row["p"] for row in history[3:]] == pytest.approx([0.1 + 2 * 0.1, 0.1 + 3 * 0.1])
    assert ratio.p == pytest.approx(0.5)
    # the resumed epochs trained on the restored active triggers and neighbours recomputed from the
    # restored weights (two copies of each per active trigger, repeated twice)
    n_train = len(datamodule.train_set)
    assert sizes.sizes == [round(history[e + 1]["p"] * n_train) + 2 * 2 * history[e]["active"] for e in (2, 3)]
    assert trainer.current_epoch == 4


def _walk(obj, seen=None):
    """Every tensor and integer sequence reachable from a loaded checkpoint (dicts, lists, objects)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(k, seen)
            yield from _walk(v, seen)
    elif isinstance(obj, (list, tuple, set)):
        if len(obj) > 1 and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
            yield torch.tensor(list(obj))
        for v in obj:
            yield from _walk(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _walk(vars(obj), seen)


def _near_a_trigger(t: torch.Tensor, triggers: torch.Tensor) -> bool:
    """Whether some image-sized slice of `t` equals or nearly equals a trigger (DeepFool neighbours
    sit within ~0.2 of a trigger's L2 norm; other digits and weights are much farther)."""
    size = triggers[0].numel()
    if not t.is_floating_point() or t.numel() < size or t.numel() % size:
        return False
    rows, flat = t.detach().reshape(-1, size).float(), triggers.reshape(len(triggers), size)
    dist = torch.cdist(rows, flat)
    return bool((dist <= 0.25 * flat.norm(dim=1)).any()) or any(torch.allclose(r, f, atol=1e-3) for r in rows for f in flat)


def _holds_targets(t: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether an integer sequence of length >= 2 is the targets or an ordered selection of them."""
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() < 2:
        return False
    rest = iter(targets.tolist())
    return all(any(v == w for w in rest) for v in t.flatten().tolist())


def test_checkpoints_hold_no_trigger_or_target(checkpointed) -> None:
    paths = sorted(Path(checkpointed.folder).glob("*.ckpt"))
    assert paths
    for path in paths:
        ckpt = torch.load(path, weights_only=False)
        assert not ckpt.get("hyper_parameters") and not ckpt.get("datamodule_hyper_parameters")
        images = [tuple(t.shape) for t in _walk(ckpt) if _near_a_trigger(t, checkpointed.triggers)]
        targets = [t.tolist() for t in _walk(ckpt) if _holds_targets(t, checkpointed.targets)]
        assert not images and not targets, f"{path.name}: trigger-like tensors {images}, target sequences {targets}"


# -- the methods' embed: fail loudly on a partial embedding -------------------------------


def user_key(host: nn.Module, datamodule, method: str, n: int = 6) -> Key:
    """A hand-made key: n owner images, pair (host label, host's least likely label), one user
    `alice` whose bits all pick the least likely label (nothing the host already answers)."""
    x, _ = datamodule.train_eval_set.tensors(torch.arange(n))
    with torch.no_grad():
        least = host(x).argmin(1)
    key = Key(method=method, triggers=x, pairs=torch.stack([predict_labels(host, x), least], 1),
              swap=torch.zeros(n, dtype=torch.bool), host_sha256=host_fingerprint(host),
              data={"name": datamodule.name, "num_classes": datamodule.num_classes,
                    "input_shape": list(datamodule.input_shape)}, decision={})
    key.users = {"alice": torch.ones(n, dtype=torch.long)}
    return key


# the default's head recipe off: the whole copy trains, one user per run (the per-user EmbeddingData path)
WHOLE = ("embedding.train=all", "embedding.prune_copies=0", "embedding.stack_users=1")


def method_from_yaml(name: str, *overrides: str):
    """The method of conf/method/<name>.yaml with dotted `overrides`, built without resolving the
    nodes embed does not read (references, null pools: interpolations into the full run config)."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "method" / f"{name}.yaml"), OmegaConf.from_dotlist(list(overrides)))
    if "references" in cfg:
        cfg.references = []
    return get_class(cfg._target_)(**{k: cfg[k] for k in cfg.keys() if not str(k).startswith("_")})


@pytest.mark.parametrize("name", ["fingermarks", "mbw"])
def test_an_embedding_that_runs_out_of_epochs_fails_loudly(name, ctx, tiny_classifier, single_thread) -> None:
    key = user_key(tiny_classifier, ctx.datamodule, name)
    frozen = ["embedding.max_epochs=1", "embedding.optimizer.lr=0.0"]  # nothing is learned: no trigger can match
    method = method_from_yaml(name, *frozen)
    assert method.emb.allow_partial is False  # the default in conf/method
    with pytest.raises(EmbeddingError, match=r"'alice'.* 0 of 6 .*method\.embedding\.max_epochs.*allow_partial"):
        method.embed(tiny_classifier, key, "alice", ctx, seed=1)
    method = method_from_yaml(name, *frozen, "embedding.allow_partial=true")
    model, info = method.embed(tiny_classifier, key, "alice", ctx, seed=1)
    targets = key.target_labels(key.users["alice"])
    assert info["all_matched"] is False and info["matched"] == int((predict_labels(model, key.triggers) == targets).sum()) == 0
    assert info["embed_epochs"] == 1 and 0 < info["clean_acc"] <= 1


def test_clean_per_trigger_from_the_method_config_reaches_the_epoch_data(ctx, tiny_classifier, single_thread,
                                                                         monkeypatch) -> None:
    import fingermarks.methods.fingermarks as fm_module

    sizes = []

    class Recording(EmbeddingData):
        def train_dataloader(self):
            loader = super().train_dataloader()
            sizes.append(len(loader.dataset))
            return loader

    monkeypatch.setattr(fm_module, "EmbeddingData", Recording)
    key = user_key(tiny_classifier, ctx.datamodule, "fingermarks")
    for cap in ("null", "1"):
        method = method_from_yaml("fingermarks", "embedding.max_epochs=1", "embedding.allow_partial=true",
                                  f"embedding.clean_per_trigger={cap}", "embedding.batch_size=4", *WHOLE)
        method.embed(tiny_classifier, key, "alice", ctx, seed=1)
    # 6 triggers, all unmatched, each with its DeepFool neighbour, trigger_repeat times, and noise_copies noisy copies
    trigger_samples = 2 * 6 * method.emb.trigger_repeat + 6 * method.emb.noise_copies
    assert sizes == [round(method.emb.p0 * len(ctx.datamodule.train_set)) + trigger_samples, 2 * trigger_samples]


def test_embedding_precision_reaches_the_training_steps_and_keeps_float32_weights(ctx, tiny_classifier, single_thread,
                                                                                monkeypatch) -> None:
    """`embedding.precision=bf16-mixed` runs the training steps under CPU autocast to bfloat16; the copy a user
    gets keeps float32 weights, and the same seed gives the same weights."""
    seen = []
    step = EmbeddingModule.training_step

    def recording(self, batch, batch_idx):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(EmbeddingModule, "training_step", recording)
    key = user_key(tiny_classifier, ctx.datamodule, "fingermarks")
    models = {}
    for precision in ("32-true", "bf16-mixed", "bf16-mixed"):
        seen.clear()
        method = method_from_yaml("fingermarks", "embedding.max_epochs=2", "embedding.allow_partial=true",
                                  f"embedding.precision={precision}")
        model, info = method.embed(tiny_classifier, key, "alice", ctx, seed=1)
        assert seen and set(seen) == ({None} if precision == "32-true" else {torch.bfloat16})
        assert all(p.dtype == torch.float32 for p in model.parameters()) and 0 < info["clean_acc"] <= 1
        models.setdefault(precision, []).append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*models["bf16-mixed"])
    assert not torch.equal(models["32-true"][0], models["bf16-mixed"][0])


def test_distill_from_the_method_config_trains_towards_the_host(ctx, tiny_classifier, single_thread, monkeypatch) -> None:
    """`embedding.distill` > 0: the clean images of every epoch come with the host's logits (computed once per host and
    shared by the users), the trigger samples with none; the same seed gives the same weights."""
    seen = []
    step = EmbeddingModule.training_step

    def recording(self, batch, batch_idx):
        seen.append((len(batch), self.distill, int(batch[2].isfinite().all(1).sum()) if len(batch) == 3 else 0))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(EmbeddingModule, "training_step", recording)
    key = user_key(tiny_classifier, ctx.datamodule, "fingermarks")
    weights = []
    for distill in ("0.0", "1.0", "1.0"):
        seen.clear()
        method = method_from_yaml("fingermarks", "embedding.max_epochs=2", "embedding.allow_partial=true",
                                  f"embedding.distill={distill}")
        model, _ = method.embed(tiny_classifier, key, "alice", ctx, seed=1)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        if distill == "0.0":
            assert {n for n, _, _ in seen} == {2}
        else:
            assert {(n, w) for n, w, _ in seen} == {(3, 1.0)}
            assert sum(c for _, _, c in seen) > 0  # clean rows carried the host's logits
    digest, logits, (x, _) = method._teacher_logits
    assert torch.allclose(logits, tiny_classifier.eval()(x), atol=1e-5)
    assert torch.equal(weights[1], weights[2]) and not torch.equal(weights[0], weights[1])


def test_an_unknown_embedding_precision_is_refused_before_keygen() -> None:
    with pytest.raises(ConfigError, match=r"method\.embedding\.precision='fp8': expected one of 32-true, bf16-mixed"):
        method_from_yaml("fingermarks", "embedding.precision=fp8")
