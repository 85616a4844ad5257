"""IN: additive Gaussian noise on every query, clipped to the input range (paper 5.2.3); axis: std."""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import torch
from torch import nn

from fingermarks.attacks.base import Attack, AttackerData
from fingermarks.context import RunContext
from fingermarks.errors import ConfigError
from fingermarks.metrics import predict_labels


class NoisySuspect:
    """A deployment that adds N(0, std^2) noise to every image it is asked about, then answers top-1.

    The noise comes from the suspect's own seeded generator: the same sequence of queries gets
    the same answers. `model` is the unchanged network behind the noise. With `per_input` the noise
    is fixed per image (seeded by a digest of the image rounded to 8 bits, as a cache of answers
    would do), so asking the same image again gets the same answer.
    """

    def __init__(self, model: nn.Module, std: float, seed: int, input_range: tuple[float, float], name: str,
                 per_input: bool = False) -> None:
        self.model, self.std, self.input_range, self.name = model, float(std), input_range, name
        self.seed, self.per_input = int(seed), bool(per_input)
        self.generator = torch.Generator().manual_seed(seed)
        self.input_shape = tuple(getattr(model, "input_shape", ())) or None
        self.num_classes = getattr(model, "num_classes", None)

    def image_seed(self, image: torch.Tensor) -> int:
        lo, hi = self.input_range
        levels = ((image - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
        digest = hashlib.sha256(self.seed.to_bytes(8, "little", signed=True) + levels.numpy().tobytes()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return x
        if self.per_input:
            noise = torch.stack([torch.randn(img.shape, generator=torch.Generator().manual_seed(self.image_seed(img)),
                                             dtype=x.dtype) for img in x])
        else:
            noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return (x + self.std * noise).clamp(*self.input_range)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return predict_labels(self.model, self.noisy(x.cpu()))


class InputNoise(Attack):
    """Every std uses the same seed: the noise pattern is shared and only scaled, so the curve
    is not jagged by the draw. `per_input`: the noise is fixed per image (`NoisySuspect`), the
    thief's answer to a verifier who asks the same triggers several times."""

    name = "input_noise"
    axis = "std"

    def __init__(self, strengths: Sequence[float], per_input: bool = False, **common) -> None:
        super().__init__(strengths, **common)
        if min(self.strengths) < 0:
            raise ConfigError(f"{self.name}: std must be >= 0, got {self.strengths}")
        self.per_input = bool(per_input)

    def run(self, model: nn.Module, data: AttackerData, ctx: RunContext) -> Iterator[tuple[float, NoisySuspect]]:
        # the network is only queried, never changed: no copy needed
        for std in self.strengths:
            yield std, NoisySuspect(model, std, self.seed, tuple(ctx.datamodule.input_range), self.suspect_name(std),
                                    self.per_input)
