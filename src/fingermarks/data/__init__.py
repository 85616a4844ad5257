"""Datasets as LightningDataModules serving float [0,1] (C,H,W) images and int64 labels."""

from __future__ import annotations

from typing import Any

from .base import DataNotFoundError, ImageDataModule, ImageDataset, RandomCropFlip, TensorImageDataset
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .digits import DigitsDataModule
from .imagenet import ImageFolderDataModule, ImageFolderDataset
from .mnist5k import MNIST5kDataModule

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "mnist5k": MNIST5kDataModule,
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageFolderDataModule,
}


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    if name not in DATAMODULES:
        raise ValueError(f"unknown data '{name}'; choose one of: {', '.join(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)


__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataNotFoundError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "MNIST5kDataModule",
    "RandomCropFlip",
    "TensorImageDataset",
    "build_datamodule",
]
