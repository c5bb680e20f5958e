"""A shard set: a dataset's image files packed into WebDataset-format tar shards by
``python -m vgg.data.shards`` (vgg/data/shards.py), read back here by random access.

A shard set's folder holds, for each split it has (train, val, test):

- ``<split>-000000.tar``, ...: WebDataset shards. Sample ``i`` of the split (its position in
  the source's listing) is the members ``<tag>_<i:09d>.<ext>`` (the image file's bytes, as
  stored) and ``<tag>_<i:09d>.cls`` (its label); ``tag`` names the listing and options the
  set was written from. Samples are spread over the shards in a seeded random order, so
  each shard holds a mixture of the classes.
- ``<split>.index.npz``, the index (arrays only, read with ``allow_pickle=False``): the
  class names, each sample's label, source name, shard, and the byte offset and size of
  its image in that shard (size -1: the file could not be read when the set was written),
  and each shard's name and size.

A split is read in the source's order, so sample i of the shards is file i of the tree:
the same sampler index gives the same pixels and label either way. An image is one
``os.pread`` at its offset; nothing scans a shard. Opening a split checks every shard's
size and the first sample's name against the index, so a truncated shard, or one from
another shard set, is a one-paragraph error before anything trains.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vgg.data.errors import DatasetError, DatasetNotFoundError
from vgg.data.imageset import ImageSet
from vgg.data.listing import DamagedIndex, stored_names
from vgg.data.shard_samples import TAR_BLOCK, ShardSamples

FORMAT = 1  # the index's layout; another is refused, never misread
INDEX_SUFFIX = ".index.npz"
WRITE_COMMAND = "python -m vgg.data.shards SRC DST"


def index_path(root: Path, split: str) -> Path:
    return root / f"{split}{INDEX_SUFFIX}"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def sample_key(tag: str, index: int) -> str:
    """The WebDataset key of sample `index` in a set tagged `tag` (no dots: WebDataset
    splits a member's name into key and extension at the first one)."""
    return f"{tag}_{index:09d}"


def is_shard_set(root: Path) -> bool:
    """Whether `root` holds a shard set (or the start of one): a train index or shard."""
    return index_path(root, "train").is_file() or (root / shard_name("train", 0)).is_file()


def _string(data: np.lib.npyio.NpzFile, key: str) -> str:
    value = data[key]
    if value.dtype != np.uint8 or value.ndim != 1:
        raise DamagedIndex(f"{key} is not a byte string")
    return value.tobytes().decode()


def _per_sample(data: np.lib.npyio.NpzFile, n: int) -> dict[str, np.ndarray]:
    arrays = {key: data[key] for key in ("labels", "shard", "offset", "size")}
    for key, array in arrays.items():
        if array.dtype != np.int64 or array.shape != (n,):
            raise DamagedIndex(f"{key} does not hold one int64 per sample")
    return arrays


def _check_shards(root: Path, split: str, samples: ShardSamples, shard_bytes: np.ndarray,
                  tag: str) -> None:
    """Each shard as the index describes it: of its size, its first image named as the
    index says. Else a DatasetError naming the shard."""
    again = (f"write the shard set again ({WRITE_COMMAND} into a new folder, or after "
             "removing this one)")
    if (samples.shard < 0).any() or (samples.shard >= len(samples.shard_names)).any():
        raise DatasetError(f"{index_path(root, split)} names shards it does not list: {again}")
    for number, name in enumerate(samples.shard_names):
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing: the index {index_path(root, split)} "
                               f"holds samples in it; copy it back, or {again}")
        if path.stat().st_size != shard_bytes[number]:
            raise DatasetError(f"{path} has {path.stat().st_size} bytes, but the index "
                               f"{index_path(root, split)} recorded {shard_bytes[number]}: it "
                               f"is truncated or was replaced; copy it again, or {again}")
        held = np.flatnonzero((samples.shard == number) & (samples.size >= 0))
        if not len(held):
            continue
        first = held[np.argmin(samples.offset[held])]
        with open(path, "rb") as file:
            file.seek(int(samples.offset[first]) - TAR_BLOCK)
            member = file.read(100).split(b"\0")[0].decode(errors="replace")
        expected = sample_key(tag, int(first)) + "."
        if not member.startswith(expected):
            raise DatasetError(f"{path} holds {member!r} where the index "
                               f"{index_path(root, split)} has sample {expected}*: the shard "
                               f"comes from another shard set (another dataset, or an earlier "
                               f"writing of a source that has changed since); {again}")


def open_split(root: Path, split: str) -> ImageSet | None:
    """The images of `split` in the shard set at `root`, checked against its shards; None
    where the set has no such split. A missing or damaged index, or a shard that does not
    fit it, is a DatasetError saying what to do."""
    path = index_path(root, split)
    if not path.is_file():
        if (root / shard_name(split, 0)).is_file():
            raise DatasetError(  # an incomplete set, not a missing one
                f"{root} holds {split} shards but not their index {path.name}: their writing "
                f"was interrupted, or the index was removed. Run {WRITE_COMMAND} again with "
                f"the same source and options: it keeps the finished shards and writes the "
                f"index")
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if data["format"].shape != () or int(data["format"]) != FORMAT:
                raise DamagedIndex(f"it is of format {data['format']}, not {FORMAT}")
            classes = tuple(stored_names(data, "class_names", "class_offsets"))
            names = stored_names(data, "names", "name_offsets")
            shard_names = list(stored_names(data, "shard_names", "shard_offsets"))
            shard_bytes, tag = data["shard_bytes"], _string(data, "tag")
            arrays = _per_sample(data, len(names))
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DatasetError(f"the shard index {path} is damaged ({type(error).__name__}: "
                           f"{error}); run {WRITE_COMMAND} again to rewrite it") from None
    labels = arrays["labels"]
    if shard_bytes.shape != (len(shard_names),) or not len(labels) \
            or (labels < 0).any() or (labels >= len(classes)).any():
        raise DatasetError(f"the shard index {path} is damaged (its labels or shard sizes do "
                           f"not fit its classes and shards); run {WRITE_COMMAND} again")
    samples = ShardSamples(root, shard_names, names, arrays["shard"], arrays["offset"],
                           arrays["size"])
    _check_shards(root, split, samples, shard_bytes, tag)
    return ImageSet(samples, labels, classes)


def read_shard_set(root: Path, part: str, download: bool) -> ImageSet | None:
    """The reader (vgg.data.registry.Reader) of a shard set, for any dataset written into
    one: "train", "test", and "val" where the set has one (else None: a share of train is
    held out, as for the files). Every split must have the training split's classes."""
    train = open_split(root, "train")
    if train is None:
        raise DatasetNotFoundError(f"{root} holds no training shards ({index_path(root, 'train')}"
                                   f"): write them with {WRITE_COMMAND}")
    if part == "train":
        return train
    images = open_split(root, part)
    if images is None and part == "test":
        raise DatasetNotFoundError(f"the shard set {root} has no test split (its source had no "
                                   "test images): score the validation split with --split val")
    if images is not None and images.classes != train.classes:
        raise DatasetError(f"{index_path(root, part)} is of another dataset: its classes "
                           f"({', '.join(images.classes[:5])}, ...) differ from the training "
                           f"shards' ({', '.join(train.classes[:5])}, ...); write every split "
                           f"of one source with {WRITE_COMMAND}")
    return images
