"""Which images make up a dataset's "train", "val" and "test" splits, and the spec of a
dataset whose spec is measured from its training split.

`val_fraction` None means the dataset's own choice: its own validation split where it has
one (ImageNet's official validation set, as in the paper; an ImageFolder's val/, validation/
or valid/), and "train" is then all of its training images; a dataset without one holds a
seeded 10% of its training images out as "val". A number holds that share of the training
images out as "val" whatever the dataset has, leaving its own validation split untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from vgg.data.errors import DatasetError
from vgg.data.imageset import ImageSet, holdout
from vgg.data.registry import DatasetSpec, registered
from vgg.data.shard_set import is_shard_set, read_shard_set

SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1  # the share held out where a dataset has no validation split


def split_images(name: str, split: str, root: str | os.PathLike, *,
                 val_fraction: float | None = None, seed: int = 0,
                 download: bool = False, classes: Sequence[str] | None = None) -> ImageSet:
    """The images and labels of `split` of the registered dataset `name` under `root` (see
    the module docstring for `val_fraction`). A held-out "val" and the "train" it leaves are
    disjoint and fixed by (val_fraction, seed). With `classes` (a trained network's, from
    its checkpoint) the images are labelled by class name as indices into them."""
    images = _split_images(name, split, root, val_fraction, seed, download)
    return images if classes is None else images.relabelled(classes)


def _split_images(name: str, split: str, root: str | os.PathLike,
                  val_fraction: float | None, seed: int, download: bool) -> ImageSet:
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DatasetError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(root)
    # A shard set (python -m vgg.data.shards) holds any dataset's splits as its files do.
    read = read_shard_set if is_shard_set(root) else registered(name).read

    def required(part: str) -> ImageSet:
        images = read(root, part, download)
        if images is None:  # a user's reader (dataset_class.py) may get this wrong
            raise DatasetError(f"the reader of dataset {name!r} returned None for its {part!r} "
                               "split: a reader returns the images of 'train' and 'test' (or "
                               "raises DatasetNotFoundError), and None only for 'val'")
        return images

    if split == "test":
        return required("test")
    if val_fraction is None:
        own_val = read(root, "val", download)
        if own_val is not None:
            return own_val if split == "val" else required("train")
        val_fraction = DEFAULT_VAL_FRACTION
    train = required("train")
    kept, held_out = holdout(len(train), val_fraction, seed)
    return train.subset(held_out if split == "val" else kept)


def dataset_spec(name: str, root: str | os.PathLike | None = None, *,
                 val_fraction: float | None = None) -> DatasetSpec:
    """The spec of a registered dataset (names are case-insensitive). A dataset whose spec is
    measured from its files (ImageFolder) needs `root`, and the `val_fraction` it is trained
    with, so that its statistics come from its training split alone."""
    spec = registered(name).spec
    if isinstance(spec, DatasetSpec):
        return spec
    if root is None:
        raise DatasetError(f"{name}'s classes and statistics come from its files: "
                           f"call dataset_spec({name!r}, root)")
    return _measured_spec(spec, name.lower(), Path(root), val_fraction)


@lru_cache(maxsize=8)
def _measured_spec(measure: Callable[[ImageSet], DatasetSpec], name: str, root: Path,
                   val_fraction: float | None) -> DatasetSpec:
    """Measuring decodes a sample of images: once per process for each dataset."""
    return measure(split_images(name, "train", root, val_fraction=val_fraction))
