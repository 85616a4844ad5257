"""Tests for the architectures in fingermarks.models (tiny widths keep them fast on CPU)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from fingermarks.models import MODELS, ImageClassifier, Normalize, build_model, last_layer

TINY_WIDTH = {"small_cnn": 8, "resnet18": 8, "resnet34": 4, "vgg11": 8, "googlenet": 0.125}

CASES = [
    *(pytest.param(name, (1, 8, 8), 10, id=f"{name}-1x8x8") for name in MODELS),
    *(pytest.param(name, (3, 32, 32), 100, id=f"{name}-3x32x32") for name in MODELS),
    pytest.param("resnet18", (3, 64, 64), 10, id="resnet18-3x64x64"),
    pytest.param("resnet18", (3, 72, 72), 10, id="resnet18-3x72x72-imagenet-stem"),
]


def tiny(name: str, shape: tuple[int, int, int], num_classes: int = 10, **kwargs) -> ImageClassifier:
    return build_model(name, num_classes=num_classes, input_shape=shape, width=TINY_WIDTH[name], **kwargs)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(("name", "shape", "num_classes"), CASES)
def test_forward_backward(name: str, shape: tuple[int, int, int], num_classes: int) -> None:
    model = tiny(name, shape, num_classes)
    logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_layout_and_last_layer(name: str) -> None:
    model = tiny(name, (1, 8, 8), num_classes=7)
    assert model.arch_name == name
    assert isinstance(model.normalize, Normalize)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    assert last_layer(model) is model.classifier
    assert model.num_classes == 7 and model.input_shape == (1, 8, 8)
    x = torch.rand(2, 1, 8, 8)
    model.eval()
    feats = model.features(model.normalize(x))
    assert feats.shape == (2, model.classifier.in_features)
    torch.testing.assert_close(model.classifier(feats), model(x))


def test_last_layer_rejects_models_without_classifier() -> None:
    with pytest.raises(TypeError, match="classifier"):
        last_layer(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("name", MODELS)
def test_rebuild_from_arch_kwargs(name: str) -> None:
    model = tiny(name, (3, 8, 8), mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.4]).eval()
    kwargs = model.arch_kwargs
    assert all(isinstance(v, (int, float, list)) for v in kwargs.values())
    assert kwargs["width"] == TINY_WIDTH[name]
    clone = build_model(model.arch_name, **kwargs).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_eval_output_independent_of_batch(name: str) -> None:
    model = tiny(name, (1, 8, 8))
    model.train()
    model(torch.rand(8, 1, 8, 8))  # move BN running stats away from their initial values
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)


def test_normalize() -> None:
    norm = Normalize([0.5, 0.25], [2.0, 0.5])
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 2.0, (x[:, 1] - 0.25) / 0.5], dim=1)
    torch.testing.assert_close(norm(x), expected)
    assert list(norm.parameters()) == []
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    assert norm.mean.shape == (1, 2, 1, 1)
    with pytest.raises(ValueError):
        Normalize([0.5, 0.5], [1.0])


def test_default_normalisation_is_identity() -> None:
    model = tiny("small_cnn", (3, 8, 8))
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model.normalize(x), x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1, "input_shape": (1, 8, 8)},
        {"num_classes": 10, "input_shape": (8, 8)},
        {"num_classes": 10, "input_shape": (1, 0, 8)},
        {"num_classes": 10, "input_shape": (3, 8, 8), "mean": [0.5], "std": [0.5, 0.5, 0.5]},
    ],
    ids=["one-class", "2d-shape", "zero-size", "mean-length"],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_model("small_cnn", **kwargs)


def test_mean_std_length_mismatch_message() -> None:
    with pytest.raises(ValueError, match="per input channel"):
        build_model("resnet18", num_classes=10, input_shape=(3, 8, 8), mean=[0.5], std=[0.5], width=4)


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'alexnet'") as info:
        build_model("alexnet", num_classes=10, input_shape=(1, 8, 8))
    assert all(name in str(info.value) for name in MODELS)


def test_imagenet_stem_only_for_large_inputs() -> None:
    small, large = tiny("resnet18", (3, 64, 64)), tiny("resnet18", (3, 72, 72))
    assert small.features[0].kernel_size == (3, 3) and small.features[0].stride == (1, 1)
    assert large.features[0].kernel_size == (7, 7) and large.features[0].stride == (2, 2)


def test_width_scales_channels() -> None:
    assert tiny("vgg11", (1, 8, 8)).classifier.in_features == 64
    assert tiny("resnet18", (1, 8, 8)).classifier.in_features == 64
    assert tiny("googlenet", (1, 8, 8)).classifier.in_features == 128


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_given_seed(name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(tiny(name, (1, 8, 8)).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_hydra_instantiate() -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"_target_": "fingermarks.models.ResNet18", "width": 4})
    shape = omegaconf.OmegaConf.create([3, 8, 8])
    model = hydra_utils.instantiate(cfg, num_classes=10, input_shape=shape, mean=[0.5] * 3, std=[0.25] * 3)
    assert model.arch_kwargs == {
        "num_classes": 10, "input_shape": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3, "width": 4
    }
