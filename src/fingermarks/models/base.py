"""Common base for the image classifiers: input normalisation and a fixed module layout.

Every model maps pixels in [0, 1] of shape (N, C, H, W) to logits of shape (N, num_classes) as
``classifier(features(normalize(x)))``. Keeping normalisation inside the model lets an exported
network (e.g. ONNX) be queried without knowing the preprocessing, and the fixed ``classifier`` name
lets attacks such as "fine-tune / re-initialise the last layer" find the final layer.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

__all__ = ["Normalize", "ImageClassifier"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; mean and std are buffers of shape (1, C, 1, 1)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise ValueError(
                f"Normalize: mean and std need the same non-zero length, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class ImageClassifier(nn.Module):
    """Base class: validates the common kwargs, records them for rebuilding, and defines ``forward``.

    Subclasses call ``super().__init__(...)`` with their extra kwargs (recorded in ``arch_kwargs``),
    then set ``self.features`` (normalised images -> flat (N, D) features) and ``self.classifier``
    (the final ``nn.Linear(D, num_classes)``). ``build_model(m.arch_name, **m.arch_kwargs)`` rebuilds
    the same architecture.
    """

    arch_name: ClassVar[str]
    features: nn.Module
    classifier: nn.Linear

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"{name}: num_classes must be an int >= 2, got {num_classes!r}")
        shape = list(input_shape)
        if len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
            raise ValueError(f"{name}: input_shape must be 3 positive ints (C, H, W), got {shape!r}")
        channels = int(shape[0])
        mean = [0.0] * channels if mean is None else [float(m) for m in mean]
        std = [1.0] * channels if std is None else [float(s) for s in std]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"{name}: mean and std need one value per input channel ({channels}), "
                f"got {len(mean)} and {len(std)}"
            )
        self.num_classes = int(num_classes)
        self.input_shape: tuple[int, int, int] = (channels, int(shape[1]), int(shape[2]))
        self.arch_kwargs: dict[str, Any] = {
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": mean,
            "std": std,
            **{k: _plain(v) for k, v in extra.items()},
        }
        self.normalize = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Convert an extra kwarg (possibly a numpy / OmegaConf value) to a plain python type."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    return value
