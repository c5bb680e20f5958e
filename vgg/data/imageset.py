"""ImageSet, the labelled images of one split as a reader returns them, and the seeded
held-out split that turns a training set into training and validation parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vgg.data.decoding import decode_image
from vgg.data.errors import DatasetError
from vgg.data.file_list import FileList
from vgg.data.shard_samples import ShardSamples


@dataclass(frozen=True)
class ImageSet:
    """Labelled images of one split: a uint8 array in memory, (N, H, W) or (N, H, W, 3), or
    image files decoded on access, given as any sequence of paths and held as a FileList, or
    the same images in a shard set's tar shards (ShardSamples)."""

    images: np.ndarray | FileList | ShardSamples
    labels: np.ndarray  # int64, indices into classes
    classes: tuple[str, ...]

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray | FileList | ShardSamples):  # a list of paths
            object.__setattr__(self, "images", FileList.of(map(str, self.images)))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(self.images[indices] if isinstance(self.images, np.ndarray)
                        else self.images.subset(indices), self.labels[indices], self.classes)

    def relabelled(self, classes: Sequence[str]) -> ImageSet:
        """The same images labelled by name as indices into ``classes`` (a trained network's
        class list); a class of these images that ``classes`` lacks is an error naming it."""
        unknown = sorted(set(self.classes) - set(classes))
        if unknown:
            raise DatasetError(f"these images hold class(es) {', '.join(unknown)} that the "
                               f"network was not trained on (its classes: "
                               f"{', '.join(classes)}): remove them, or train on them too")
        index = {name: label for label, name in enumerate(classes)}
        mapping = np.array([index[name] for name in self.classes], dtype=np.int64)
        return ImageSet(self.images, mapping[self.labels], tuple(classes))


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into sorted (kept, held_out) indices, round(fraction * n)
    held out; the same for the same (n, fraction, seed) on every machine (numpy's PCG64).
    Held-out sets are nested: a larger fraction holds out a superset."""
    order = np.random.default_rng(seed).permutation(n)
    held = round(fraction * n)
    return np.sort(order[held:]), np.sort(order[:held])


def decode_at(images: Sequence[str], index: int) -> np.ndarray | None:
    """Image `index` of a split's image files (paths), or of its shards (ShardSamples),
    decoded alike: None where unreadable."""
    if isinstance(images, ShardSamples):
        return images.decode(index)
    return decode_image(images[index])
