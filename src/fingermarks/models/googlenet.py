"""CIFAR-style GoogLeNet (after kuangliu/pytorch-cifar), without auxiliary heads, scalable in width."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import ImageClassifier

__all__ = ["GoogLeNet"]

# Inception modules: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); "M" is a stride-2 max-pool.
_CONFIG: list[tuple[int, ...] | str] = [
    (64, 96, 128, 16, 32, 32),  # a3
    (128, 128, 192, 32, 96, 64),  # b3
    "M",
    (192, 96, 208, 16, 48, 64),  # a4
    (160, 112, 224, 24, 64, 64),  # b4
    (128, 128, 256, 24, 64, 64),  # c4
    (112, 144, 288, 32, 64, 64),  # d4
    (256, 160, 320, 32, 128, 128),  # e4
    "M",
    (256, 160, 320, 32, 128, 128),  # a5
    (384, 192, 384, 48, 128, 128),  # b5
]
_STEM = 192


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3-3x3 as the "5x5"; maxpool-1x1), concatenated."""

    def __init__(self, c_in: int, n1: int, n3_red: int, n3: int, n5_red: int, n5: int, n_pool: int) -> None:
        super().__init__()
        self.out_channels = n1 + n3 + n5 + n_pool
        self.b1 = nn.Sequential(*_conv_bn_relu(c_in, n1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(c_in, n3_red, 1), *_conv_bn_relu(n3_red, n3, 3))
        self.b3 = nn.Sequential(
            *_conv_bn_relu(c_in, n5_red, 1), *_conv_bn_relu(n5_red, n5, 3), *_conv_bn_relu(n5, n5, 3)
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(c_in, n_pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(ImageClassifier):
    """GoogLeNet: 3x3 stem conv, Inception a3-b3, pool, a4-e4, pool, a5-b5, global average pool.

    Channel counts are ``max(1, round(c * width))``. The 3x3/stride-2/pad-1 max-pools never shrink a
    feature map below 1x1, so every input size works.
    """

    arch_name = "googlenet"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, mean=mean, std=std, width=width)
        if width <= 0:
            raise ValueError(f"GoogLeNet: width must be > 0, got {width}")

        def scale(c: int) -> int:
            return max(1, round(c * width))

        c_in = scale(_STEM)
        layers: list[nn.Module] = _conv_bn_relu(self.input_shape[0], c_in, 3)
        for item in _CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            else:
                block = Inception(c_in, *(scale(c) for c in item))
                layers.append(block)
                c_in = block.out_channels
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, self.num_classes)
