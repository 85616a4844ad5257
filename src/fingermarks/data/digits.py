"""scikit-learn's bundled 8x8 digits (1,797 images, values 0..16 scaled to [0,1]): the tiniest
real dataset, used by the fastest tests."""

from __future__ import annotations

import functools
from typing import Any

import torch
from sklearn.datasets import load_digits

from .base import ImageDataModule, ImageDataset, TensorImageDataset, split_off


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 [0,1] (1797,1,8,8), labels int64 (1797,))``."""
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)
    return images, torch.as_tensor(digits.target, dtype=torch.int64)


class DigitsDataModule(ImageDataModule):
    """Seeded stratified split: ``test_size`` (360) test, ``val_size`` (180) val, the rest train.

    ``mean``/``std`` are the statistics of the full dataset after scaling by 1/16.
    """

    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)
    mean = (0.3053,)
    std = (0.3760,)
    default_val_size = 180
    default_crop_padding = 1  # one-pixel shifts only (used when augment=True)

    def __init__(self, test_size: int = 360, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test_size = test_size

    def _load(self) -> tuple[ImageDataset, ImageDataset]:
        return split_off(TensorImageDataset(*load_digits_tensors()), self.test_size, self.split_seed)
