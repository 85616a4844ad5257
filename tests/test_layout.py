"""Channels-last weights during fits and key generation (training.layout): same values, layout undone after."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset

from fingermarks.models import build_model
from fingermarks.training.layout import ChannelsLast, channels_last, channels_last_safe, trainer

pytestmark = pytest.mark.usefixtures("single_thread")


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=10, input_shape=[1, 28, 28], width=4)


def conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1]


def test_safe_only_with_convolutions_and_no_strided_1x1() -> None:
    assert channels_last_safe(small_cnn())
    assert not channels_last_safe(build_model("mlp", num_classes=10, input_shape=[1, 28, 28], hidden=[8]))
    # a ResNet's strided 1x1 shortcut: its channels-last backward corrupts the heap in torch 2.13's CPU build
    assert not channels_last_safe(build_model("resnet18", num_classes=10, input_shape=[1, 28, 28], width=4))


def test_context_keeps_values_and_parameters_and_undoes_the_layout() -> None:
    model = small_cnn().eval()
    params = list(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        reference = model(x)
        with channels_last(model):
            assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in conv_weights(model))
            torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    parameters_to_vector(model.parameters())  # .view(-1) works again


def test_unsafe_model_is_left_alone() -> None:
    model = build_model("resnet18", num_classes=10, input_shape=[1, 28, 28], width=4)
    with channels_last(model):
        assert all(p.is_contiguous() for p in model.parameters())


class _Module(L.LightningModule):
    def __init__(self, model: torch.nn.Module, fail: bool = False) -> None:
        super().__init__()
        self.model, self.fail, self.layouts = model, fail, []

    def training_step(self, batch, batch_idx):
        self.layouts.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(self.model)))
        if self.fail:
            raise RuntimeError("boom")
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.01)


def _fit(module: L.LightningModule, **kwargs) -> None:
    data = DataLoader(TensorDataset(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))), batch_size=8)
    t = trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, **kwargs)
    t.fit(module, data)


def test_trainer_trains_channels_last_and_hands_back_contiguous_weights() -> None:
    module = _Module(small_cnn())
    _fit(module)
    assert module.layouts == [True, True]
    assert all(p.is_contiguous() for p in module.model.parameters())
    parameters_to_vector(module.model.parameters())
    off = _Module(small_cnn())
    _fit(off, channels_last=False)
    assert off.layouts == [False, False]


def test_layout_undone_when_the_fit_raises() -> None:
    module = _Module(small_cnn(), fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(module)
    assert module.layouts == [True]
    assert all(p.is_contiguous() for p in module.model.parameters())


def test_layout_callback_comes_first() -> None:
    class Other(L.Callback):
        pass

    t = trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[Other()])
    mine = [c for c in t.callbacks if isinstance(c, (ChannelsLast, Other))]
    assert isinstance(mine[0], ChannelsLast) and isinstance(mine[1], Other)
