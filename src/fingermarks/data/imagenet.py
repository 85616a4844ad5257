"""ImageNet-style class-per-folder data: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*``.

Images are loaded lazily with PIL: converted to RGB, the shorter side resized to ``image_size``,
then center-cropped to ``image_size`` x ``image_size``. Validation is carved out of train/ (after
the optional ``per_class_limit``); the test set is root/val.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .base import Augment, DataNotFoundError, ImageDataModule, ImageDataset, Indices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
LAYOUT = "<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg (one folder per class)"


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """Float [0,1] (3,size,size): shorter side resized to ``size``, then center crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        w, h = (max(size, round(s * scale)) for s in im.size)
        im = im.resize((w, h), Image.Resampling.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        pixels = np.array(im, dtype=np.uint8)
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)


def list_classes(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataNotFoundError(f"image folder data not found: missing {folder}; expected {LAYOUT}")
    return sorted(d.name for d in folder.iterdir() if d.is_dir())


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolderDataset(ImageDataset):
    """Lazily loaded image files with labels; same interface as TensorImageDataset, with
    ``.paths`` in place of ``.images``."""

    def __init__(self, paths: list[Path], labels: Tensor, image_size: int, augment: Augment | None = None) -> None:
        super().__init__(labels, augment)
        self.paths = paths
        self.image_size = image_size

    def load(self, index: int) -> Tensor:
        return load_image(self.paths[index], self.image_size)

    def subset(self, indices: Indices) -> ImageFolderDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageFolderDataset([self.paths[i] for i in idx.tolist()], self.labels[idx], self.image_size, self.augment)


class ImageFolderDataModule(ImageDataModule):
    """Class-per-folder dataset (ImageNet or a subset of it).

    ``classes``: optional subset of class names (default: all folders of train/, sorted).
    ``per_class_limit``: keep at most this many train images per class, chosen with ``split_seed``.
    ``val_size``: a count or a fraction (default 0.1) of the kept train images.
    Augmentation (default on): horizontal flip and a random crop with zero padding
    ``crop_padding`` (default ``image_size // 8``).
    """

    name = "imagenet"
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    default_val_size = 0.1
    default_augment = True
    default_hflip = True

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 224,
        per_class_limit: int | None = None,
        classes: list[str] | None = None,
        crop_padding: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(crop_padding=image_size // 8 if crop_padding is None else crop_padding, **kwargs)
        self.root = Path(root)
        self.image_size = image_size
        self.per_class_limit = per_class_limit
        available = list_classes(self.root / "train")
        if classes is not None and (unknown := sorted(set(classes) - set(available))):
            raise ValueError(f"classes not in {self.root / 'train'}: {unknown}")
        self.classes = available if classes is None else sorted(classes)
        self.num_classes = len(self.classes)
        self.input_shape = (3, image_size, image_size)

    def _folder_dataset(self, split: str, limit: int | None) -> ImageFolderDataset:
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            files = list_images(self.root / split / name)
            if not files:
                raise DataNotFoundError(f"no images in {self.root / split / name}; expected {LAYOUT}")
            if limit is not None and len(files) > limit:
                # seeded by class name, so a class keeps the same images whatever `classes` selects
                rng = np.random.default_rng([self.split_seed, zlib.crc32(name.encode())])
                files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]
            paths += files
            labels += [label] * len(files)
        return ImageFolderDataset(paths, torch.tensor(labels), self.image_size)

    def _load(self) -> tuple[ImageDataset, ImageDataset]:
        if list_classes(self.root / "val") != list_classes(self.root / "train"):
            raise ValueError(f"{self.root / 'val'} must hold the same class folders as {self.root / 'train'}")
        return self._folder_dataset("train", self.per_class_limit), self._folder_dataset("val", None)
