"""Write a dataset's image files as a shard set: WebDataset-format tar shards plus an index
(vgg/data/shard_set.py says what is in them), which --data_root then trains on as it
trains on the files.

    python -m vgg.data.shards SRC DST [--dataset ImageNet] [--workers 8]

SRC is what --data_root would be for the files: any ImageFolder layout, or ImageNet's
(train/<wnid>/, val/ in class folders or flat with the devkit). Its splits are read as
training reads them, through the same file index (vgg/data/listing.py). Shards are written
in parallel (--workers processes), each atomically: an interrupted run leaves finished
shards only, and running it again with the same source and options keeps them and writes
the rest. Every image is decoded before it is stored; one that cannot be decoded is left
out, named at the end ("could not read N file(s)"), and marked in the index, so that
training skips it as it skips the file.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgg import configuration
from vgg.atomic import check_folder, replace_atomically
from vgg.data.decoding import decode_bytes
from vgg.data.errors import DatasetError, DatasetNotFoundError
from vgg.data.file_list import FileList, path_prefix
from vgg.data.imageset import ImageSet
from vgg.data.listing import offsets_of
from vgg.data.registry import registered
from vgg.data.shard_set import (
    FORMAT,
    index_path,
    is_shard_set,
    sample_key,
    shard_name,
)
from vgg.errors import UserError, run_cli

SAMPLES_PER_SHARD = 1000
PROGRAM = "python -m vgg.data.shards"


def _tar_writer() -> type:
    """webdataset's TarWriter; webdataset is optional (the GPU machines' stack lacks it)."""
    try:
        from webdataset import TarWriter
    except ImportError:
        raise UserError(
            f"{PROGRAM} writes shards with webdataset, which is not installed: pip install "
            "webdataset==0.2.111 (the version requirements.txt pins). Training on a shard set "
            "that is already written does not need it") from None
    return TarWriter


@dataclass(frozen=True)
class Split:
    """What one split's shards are written from, and the tag naming that: the source's
    relative names, labels and classes, the shard size and the seed of the order."""

    name: str
    images: ImageSet
    files: FileList  # the images' paths
    names: FileList  # relative to the data root
    order: np.ndarray  # sample positions in writing order
    samples_per_shard: int
    tag: str

    def shards(self) -> list[np.ndarray]:
        return [self.order[start:start + self.samples_per_shard]
                for start in range(0, len(self.order), self.samples_per_shard)]


def plan(src: Path, name: str, images: ImageSet, samples_per_shard: int, seed: int) -> Split:
    if not isinstance(images.images, FileList):
        raise DatasetError("this dataset is held in memory arrays, not image files: shards are "
                           "for image files (ImageFolder, ImageNet); train on it as it is")
    files = images.images
    prefix = path_prefix(src)  # names relative to the data root, as provenance records them
    names = FileList.of(path[len(prefix):] for path in files)
    digest = hashlib.sha256()
    for array in (names.buffer, offsets_of(names), images.labels,
                  FileList.of(images.classes).buffer, np.array([samples_per_shard, seed])):
        digest.update(np.ascontiguousarray(array).tobytes())
    order = np.random.default_rng(seed).permutation(len(images))
    return Split(name, images, files, names, order, samples_per_shard, digest.hexdigest()[:12])


def source_splits(src: Path, dataset: str) -> dict[str, ImageSet]:
    """The splits of the dataset at `src`, read as training reads them: train always, val
    and test where the source has them."""
    if is_shard_set(src):
        raise UserError(f"{src} is a shard set already; give the image folder it came from")
    read = registered(dataset).read
    found = {"train": read(src, "train", False)}
    val = read(src, "val", False)
    if val is not None:
        found["val"] = val
    try:
        found["test"] = read(src, "test", False)
    except DatasetNotFoundError:
        pass  # no test split, as training would say when asked for one
    return {part: images for part, images in found.items() if images is not None}


# ------------------------------------------------------------------ one shard, in a worker

def write_shard(path: Path, tag: str, samples: list[tuple[int, str, int]]) -> list[str]:
    """Shard `path` holding `samples` (position, file, label), each file decoded first;
    the files that could not be read or decoded are left out and returned."""
    tar_writer, unreadable = _tar_writer(), []
    with replace_atomically(path, "wb") as file:
        writer = tar_writer(file, encoder=False, mtime=0)  # same input, same bytes
        for position, source, label in samples:
            try:
                with open(source, "rb") as image:
                    data = image.read()
            except OSError:
                data = b""
            if decode_bytes(np.frombuffer(data, np.uint8)) is None:
                unreadable.append(source)
                continue
            extension = os.path.splitext(source)[1].lstrip(".").lower() or "img"
            writer.write({"__key__": sample_key(tag, position), extension: data,
                          "cls": str(label).encode()})
        writer.close()
    return unreadable


def _write_task(task: tuple[Path, str, list[tuple[int, str, int]]]) -> list[str]:
    return write_shard(*task)


def scan_shard(path: Path, tag: str) -> dict[int, tuple[int, int]] | None:
    """Each image's (offset, size) in shard `path`, by sample position; None where the
    shard is damaged (it is written again). A shard of another tag is stale: an error."""
    found = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if not key.startswith(f"{tag}_"):
                    raise UserError(
                        f"{path} holds {member.name}, not a sample of this source as it is now "
                        f"(tag {tag}): the source tree, or --samples_per_shard/--seed, changed "
                        f"since {path.parent}'s shards were written. Nothing was changed: write "
                        f"to a new folder, or remove {path.parent}'s shards and run again")
                if extension != "cls":
                    found[int(key.rpartition("_")[2])] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return None
    return found


# ------------------------------------------------------------------ a split, in parallel

def write_split(dst: Path, split: Split, workers: int) -> list[str]:
    """The split's shards (those not finished by an earlier run) and its index; returns the
    files that could not be read."""
    shards = split.shards()
    names = [shard_name(split.name, number) for number in range(len(shards))]
    files = list(map(str, split.files))  # paths for the workers, once
    scanned = {number: scan_shard(dst / name, split.tag) for number, name in enumerate(names)
               if (dst / name).is_file()}
    todo = [number for number in range(len(shards)) if scanned.get(number) is None]
    tasks = [(dst / names[number], split.tag,
              [(int(i), files[i], int(split.images.labels[i])) for i in shards[number]])
             for number in todo]
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            list(pool.imap_unordered(_write_task, tasks))
    else:
        for task in tasks:
            _write_task(task)
    scanned.update({number: scan_shard(dst / names[number], split.tag) for number in todo})
    n = len(split.images)
    shard, offset = np.zeros(n, np.int64), np.zeros(n, np.int64)
    size = np.full(n, -1, np.int64)  # -1: not in the shard, unreadable
    for number, positions in enumerate(shards):
        found = scanned[number]
        if found is None:
            raise DatasetError(f"{dst / names[number]} could not be read back just after it "
                               "was written: is the disk full or failing?")
        shard[positions] = number
        for position in positions:
            offset[position], size[position] = found.get(int(position), (0, -1))
    _write_index(dst, split, names, shard, offset, size)
    return [files[i] for i in np.flatnonzero(size < 0)]


def _write_index(dst: Path, split: Split, names: Sequence[str], shard: np.ndarray,
                 offset: np.ndarray, size: np.ndarray) -> None:
    classes, shard_names = FileList.of(split.images.classes), FileList.of(names)
    with replace_atomically(index_path(dst, split.name), "wb") as file:
        np.savez(file, format=np.int64(FORMAT),
                 class_names=classes.buffer, class_offsets=offsets_of(classes),
                 names=split.names.buffer, name_offsets=offsets_of(split.names),
                 shard_names=shard_names.buffer, shard_offsets=offsets_of(shard_names),
                 shard_bytes=np.array([(dst / name).stat().st_size for name in names],
                                      np.int64),
                 tag=np.frombuffer(split.tag.encode(), np.uint8),
                 labels=split.images.labels.astype(np.int64), shard=shard, offset=offset,
                 size=size)


def same_images(a: ImageSet, b: ImageSet) -> bool:
    """The same files with the same labels and classes, in the same order."""
    return (a.classes == b.classes and np.array_equal(a.labels, b.labels)
            and isinstance(a.images, FileList) and a.images == b.images)


def write_shard_set(src: Path, dst: Path, dataset: str = "ImageFolder", workers: int = 1,
                    samples_per_shard: int = SAMPLES_PER_SHARD, seed: int = 0
                    ) -> dict[str, list[str]]:
    """Write (or finish writing) the shard set of the dataset at `src` into `dst`; returns
    each split's unreadable files."""
    _tar_writer()  # before any work: is webdataset here?
    if samples_per_shard < 1 or workers < 1:
        raise UserError("--samples_per_shard and --workers must be at least 1")
    splits = source_splits(src, dataset)
    check_folder(dst, f"{PROGRAM} {dst}")
    unreadable: dict[str, list[str]] = {}
    for name, images in splits.items():
        same = next((other for other in unreadable if same_images(splits[other], images)), None)
        if same is not None:  # ImageNet's test split is its val: one set of shards for both
            with open(index_path(dst, same), "rb") as index, \
                    replace_atomically(index_path(dst, name), "wb") as copy:
                shutil.copyfileobj(index, copy)
            unreadable[name] = unreadable[same]
            print(f"{name}: the {same} split's {len(images)} images, index "
                  f"{index_path(dst, name)} over its shards")
            continue
        split = plan(src, name, images, samples_per_shard, seed)
        unreadable[name] = write_split(dst, split, workers)
        print(f"{name}: {len(images)} images in {len(split.shards())} shard(s), index "
              f"{index_path(dst, name)}")
    return unreadable


@dataclass
class ShardsConfig:
    """The options of ``python -m vgg.data.shards`` (vgg/configuration.py: flags and YAML)."""
    # --- what to write ---
    src: str | None = configuration.positional(
        "SRC", help="the dataset's folder (its --data_root)")
    dst: str | None = configuration.positional(
        "DST", help="the shard set's folder, --data_root for training on it")
    dataset: str = "ImageFolder"  # how SRC is laid out: ImageFolder or ImageNet
    # --- how ---
    workers: int | None = None  # processes writing shards; none: one per core
    samples_per_shard: int = SAMPLES_PER_SHARD  # images per shard
    seed: int = 0  # seed of the order that spreads the images over the shards


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = configuration.command_config(ShardsConfig, argv, __doc__, PROGRAM)
        if cfg is None:  # --print_config
            return 0
        unreadable = write_shard_set(Path(cfg.src), Path(cfg.dst), cfg.dataset,
                                     (os.cpu_count() or 1) if cfg.workers is None
                                     else cfg.workers,
                                     cfg.samples_per_shard, cfg.seed)
        bad = [file for files in unreadable.values() for file in files]
        if bad:
            print(f"could not read {len(bad)} file(s): " + ", ".join(bad), file=sys.stderr)
        return 0

    return run_cli(run, PROGRAM)


if __name__ == "__main__":
    sys.exit(main())
