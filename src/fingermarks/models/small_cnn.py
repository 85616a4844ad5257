"""A small, CPU-friendly CNN for MNIST-sized (1x28x28) and sklearn-digits (1x8x8) inputs."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import ImageClassifier

__all__ = ["SmallCNN"]

_HIDDEN = 128


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(ImageClassifier):
    """Two conv stages (w and 2w channels), then a 128-unit hidden layer on the flattened map.

    A stage's 2x2 max-pool is only applied while the feature map is at least 8 px, so 8x8 inputs
    keep a 4x4 map and 28x28 inputs shrink to 7x7. The map is flattened at its known size (no
    adaptive pool: ONNX cannot export one whose output size does not divide its input).
    """

    arch_name = "small_cnn"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        width: int = 32,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(
            num_classes=num_classes, input_shape=input_shape, mean=mean, std=std, width=width, dropout=dropout
        )
        if width < 1:
            raise ValueError(f"SmallCNN: width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SmallCNN: dropout must be in [0, 1), got {dropout}")
        channels, h, w = self.input_shape
        layers: list[nn.Module] = []
        for c_in, c_out in ((channels, width), (width, 2 * width)):
            layers += _conv_bn_relu(c_in, c_out) + _conv_bn_relu(c_out, c_out)
            if min(h, w) >= 8:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        layers += [
            nn.Flatten(),
            nn.Linear(2 * width * h * w, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        ]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(_HIDDEN, self.num_classes)
