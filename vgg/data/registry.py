"""The dataset registry: each dataset's name, its spec (classes, channels, training size,
normalisation, augmentation defaults) and its reader, looked up case-insensitively."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vgg.data.errors import DatasetError
from vgg.data.imageset import ImageSet


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int  # network input side trained at by default (a multiple of 32)
    mean: tuple[float, ...]  # per channel, of the pixels the network sees, scaled to [0, 1]
    std: tuple[float, ...]
    hflip: bool  # False where a mirror image is another class or no image (digits)
    train_scale: tuple[int, int]  # default (Smin, Smax) of the training rescale
    crop_padding: int = 0  # pad-and-random-crop margin for images already at image_size

    def train_scale_at(self, image_size: int) -> tuple[int, int]:
        """The default training scale range for a network trained at ``image_size``: the
        dataset's own, resized in proportion when image_size differs from its native one
        (S = 256 at 224 becomes S = 37 at 32)."""
        ratio = image_size / self.image_size
        return round(self.train_scale[0] * ratio), round(self.train_scale[1] * ratio)


# A reader returns a split of a dataset under a data root: "train" and "test" always (or a
# DatasetNotFoundError saying what is missing), "val" only where the dataset has a
# validation split of its own, else None (then one is held out of "train"). Its last
# argument asks it to download missing files.
Reader = Callable[[Path, str, bool], ImageSet | None]


@dataclass(frozen=True)
class Registered:
    # A DatasetSpec, or a callable that measures one from the training images (ImageFolder).
    spec: DatasetSpec | Callable[[ImageSet], DatasetSpec]
    read: Reader


DATASETS: dict[str, Registered] = {}


def register(name: str, spec: DatasetSpec | Callable[[ImageSet], DatasetSpec], read: Reader,
             aliases: Sequence[str] = ()) -> None:
    """Make a dataset available by `name` (and `aliases`) to dataset_spec and build_dataset;
    names are case-insensitive, so a name may not differ from another only in case."""
    for key in (name, *aliases):
        clash = [other for other in DATASETS if other.lower() == key.lower() and other != key]
        if clash:
            raise DatasetError(f"dataset name {key!r} differs from the registered {clash[0]!r}"
                               " only in case, and names are case-insensitive: pick another")
        DATASETS[key] = Registered(spec, read)


def registered(name: str) -> Registered:
    """The registry entry of `name`, whatever its case."""
    by_lower_name = {key.lower(): entry for key, entry in DATASETS.items()}
    if name.lower() not in by_lower_name:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} "
                           "(names are case-insensitive), or register your own in "
                           "dataset_class.py")
    return by_lower_name[name.lower()]
