"""CIFAR-style ResNet-18/34 (BasicBlock) that adapts to the input channels, size and class count.

Inputs up to 64 px use the CIFAR stem (3x3 conv, stride 1, no max-pool); larger inputs (e.g. 224 px
ImageNet) use the ImageNet stem (7x7 conv stride 2 + max-pool) to keep the cost reasonable.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from .base import ImageClassifier

__all__ = ["ResNet", "ResNet18", "ResNet34"]

_IMAGENET_STEM_ABOVE = 64  # min(H, W) above which the downsampling ImageNet stem is used


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(ImageClassifier):
    """ResNet with four stages of ``blocks[i]`` BasicBlocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2)."""

    blocks: ClassVar[tuple[int, ...]]

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        width: int = 64,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, mean=mean, std=std, width=width)
        if width < 1:
            raise ValueError(f"{type(self).__name__}: width must be >= 1, got {width}")
        channels, h, w = self.input_shape
        if min(h, w) > _IMAGENET_STEM_ABOVE:
            stem = [
                nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
        else:
            stem = [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        stages: list[nn.Module] = []
        c_in = width
        for i, n_blocks in enumerate(self.blocks):
            c_out = width * 2**i
            # Only the first block of stages 2-4 downsamples.
            layers = [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(c_out, c_out, stride=1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.features = nn.Sequential(*stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, self.num_classes)


class ResNet18(ResNet):
    arch_name = "resnet18"
    blocks = (2, 2, 2, 2)


class ResNet34(ResNet):
    arch_name = "resnet34"
    blocks = (3, 4, 6, 3)
