"""CIFAR-10 / CIFAR-100 from the official python-pickle archives (extracted).

Each pickle holds ``b"data"``: (N, 3072) uint8, per image the 1024 R values, then G, then B, each
row-major 32x32; labels under ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).
Validation is carved out of the official train set; the test set is the official one.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DataNotFoundError, ImageDataModule, ImageDataset, TensorImageDataset


@functools.lru_cache(maxsize=4)
def load_cifar_pickles(paths: tuple[str, ...], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated ``(images uint8 (N,3,32,32), labels int64 (N,))`` of the given batch files."""
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class _CIFARDataModule(ImageDataModule):
    """Shared reader; subclasses name the archive folder, its files and the label key."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    layout: str  # the expected files, for error messages
    label_key: bytes

    input_shape = (3, 32, 32)
    default_val_size = 5000
    default_augment = True
    default_crop_padding = 4
    default_hflip = True

    def __init__(self, root: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)

    def archive_dir(self) -> Path:
        """``root/<folder>``, or ``root`` itself when it already is that folder."""
        nested = self.root / self.folder
        return nested if nested.is_dir() or not (self.root / self.train_files[0]).is_file() else self.root

    def _files(self, names: tuple[str, ...]) -> tuple[str, ...]:
        paths = tuple(str(self.archive_dir() / n) for n in names)
        for path in paths:
            if not os.path.isfile(path):
                raise DataNotFoundError(
                    f"{self.title} not found: missing {path}; expected {self.root / self.folder}/{self.layout} "
                    "(the official python-pickle archive, extracted)"
                )
        return paths

    def _load(self) -> tuple[ImageDataset, ImageDataset]:
        train = load_cifar_pickles(self._files(self.train_files), self.label_key)
        test = load_cifar_pickles(self._files(self.test_files), self.label_key)
        return TensorImageDataset(*train), TensorImageDataset(*test)


class CIFAR10DataModule(_CIFARDataModule):
    name = "cifar10"
    title = "CIFAR-10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    layout = "{data_batch_1..5,test_batch}"
    label_key = b"labels"


class CIFAR100DataModule(_CIFARDataModule):
    name = "cifar100"
    title = "CIFAR-100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    layout = "{train,test}"
    label_key = b"fine_labels"
