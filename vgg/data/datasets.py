"""The torch Datasets of a split: images in memory or image files decoded on access (with
unreadable files skipped or reported), and build_dataset, which makes the right one."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vgg.data.errors import DatasetError, UnreadableImageError
from vgg.data.imageset import ImageSet, decode_at
from vgg.data.splits import split_images

ON_CORRUPT = ("skip", "error")


class ArrayDataset(Dataset):
    """Labelled images held in memory as one uint8 array (the small datasets)."""

    def __init__(self, images: ImageSet, transform: Callable[[np.ndarray], torch.Tensor]):
        assert isinstance(images.images, np.ndarray)  # image files go to ImageFileDataset
        self.images, self.labels, self.classes = images.images, images.labels, images.classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class ImageFileDataset(Dataset):
    """Labelled image files, decoded on access (never up front: ImageNet has 1.28M), their
    paths held as a FileList: arrays a forked loader worker shares, not Python strings; or
    the same images read from a shard set's shards (ShardSamples), alike in every other way.

    A file that cannot be decoded (truncated ones included) raises UnreadableImageError with
    on_corrupt="error". With "skip" the next readable image takes its place, so batches keep
    their size and distributed ranks their batch count, and the file is marked in
    `unreadable`, a shared-memory flag per file that every loader worker writes to;
    build_loader warns about them once per epoch.
    """

    def __init__(self, images: ImageSet, transform: Callable[[np.ndarray], torch.Tensor],
                 on_corrupt: str = "skip"):
        assert not isinstance(images.images, np.ndarray)  # arrays go to ArrayDataset
        self.files, self.labels, self.classes = images.images, images.labels, images.classes
        self.transform, self.on_corrupt = transform, on_corrupt
        self.unreadable = torch.zeros(len(self.files), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # IndexError past the end, as iteration expects
        for offset in range(len(self)):  # the next readable image stands in for a bad one
            i = (index + offset) % len(self)
            if self.unreadable[i]:
                continue
            image = decode_at(self.files, i)
            if image is not None:
                return self.transform(image), int(self.labels[i])
            if self.on_corrupt == "error":
                raise UnreadableImageError(f"cannot decode {self.files[i]} (pass --on_corrupt "
                                           "skip to skip unreadable images)")
            self.unreadable[i] = True
        raise UnreadableImageError(f"none of the {len(self)} images could be decoded (e.g. "
                                   f"{self.files[0]}): are they image files?")

    def unreadable_files(self) -> list[str]:
        files: Sequence[str] = self.files  # FileList's __getitem__ types int and slice alike
        return [files[i] for i in torch.nonzero(self.unreadable).flatten().tolist()]


def build_dataset(name: str, split: str, root: str | os.PathLike,
                  transform: Callable[[np.ndarray], torch.Tensor], *,
                  val_fraction: float | None = None, seed: int = 0, download: bool = False,
                  on_corrupt: str = "skip", classes: Sequence[str] | None = None
                  ) -> ArrayDataset | ImageFileDataset:
    """Split "train", "val" or "test" of a registered dataset under `root`, items
    (transform(image), label). `val_fraction` None takes the dataset's own validation split
    where it has one (ImageNet's official one, an ImageFolder's val/) and holds a seeded 10%
    of the training images out as "val" otherwise; a number holds that share out whatever
    the dataset has (vgg.data.splits). The held-out split is fixed by `seed` (train.py and
    evaluate.py keep the default, so a run's --seed never moves it). Unreadable image files
    are skipped and counted (on_corrupt="skip") or raise ("error"). `classes` labels the
    images by name as indices into a trained network's class list."""
    if on_corrupt not in ON_CORRUPT:
        raise DatasetError(f"--on_corrupt must be one of {', '.join(ON_CORRUPT)}, got "
                           f"{on_corrupt!r}")
    images = split_images(name, split, root, val_fraction=val_fraction, seed=seed,
                          download=download, classes=classes)
    if isinstance(images.images, np.ndarray):
        return ArrayDataset(images, transform)
    return ImageFileDataset(images, transform, on_corrupt)
