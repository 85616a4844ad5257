"""VGG-11 with BatchNorm, adapted to small inputs and scalable in width."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import ImageClassifier

__all__ = ["VGG11"]

_CONFIG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG11(ImageClassifier):
    """VGG-11-BN; channel counts are scaled by ``width / 64``.

    A max-pool is skipped when it would shrink the feature map below 1x1 (so 8x8 and 28x28 inputs
    work), and an adaptive average pool to 1x1 feeds the linear classifier for any input size.
    """

    arch_name = "vgg11"

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
            raise ValueError(f"VGG11: width must be >= 1, got {width}")
        c_in, h, w = self.input_shape
        layers: list[nn.Module] = []
        for item in _CONFIG:
            if item != "M":
                c_out = max(1, int(item) * width // 64)
                conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
                layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            elif min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, self.num_classes)
