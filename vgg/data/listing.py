"""The index of a folder of images (its class folders, their image files), listed once per
job: kept in memory for the process, and on disk for every process and every start after
it, keyed by the state of the tree, so that a changed tree is listed again.

Listing ImageNet's train/ (1.28M files in 1,000 folders) takes minutes on a network file
system, at every start, requeue and rank. The index file is written beside the folder
(``<parent>/.<folder>.vgg-index-<kind>.npz``) where that is writable, else in the user's
cache (``$XDG_CACHE_HOME/vgg/index``, ``~/.cache`` by default), atomically (a killed or
concurrent job never leaves half a file), and read with ``allow_pickle=False``: arrays
only, nothing in it runs code. A damaged index is ignored with a warning and rewritten.
In a distributed job rank 0 lists (or reads the index) while the others wait, then read
what it wrote.
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgg.atomic import replace_atomically
from vgg.data.decoding import IMAGE_EXTENSIONS
from vgg.data.file_list import FileList
from vgg.distributed import barrier, is_main
from vgg.run_log import warn

# The index file's layout; an index of another version is listed again, never misread.
FORMAT = 1
# A folder modified within this many seconds of being listed may be modified again within
# the same mtime tick (coarse clocks, FAT's 2 s) without its state changing, so its listing
# is neither kept nor written, and it is listed again next time (git's "racily clean" rule).
SETTLED_SECONDS = 2.0


def class_entries(folder: Path) -> list[os.DirEntry]:
    """The class sub-folders of `folder`, unsorted; hidden ones (.ipynb_checkpoints) skipped."""
    return [entry for entry in os.scandir(folder)
            if entry.is_dir() and not entry.name.startswith(".")]


def class_names(folder: Path) -> list[str]:
    """The sorted names of the class sub-folders of `folder`, hidden ones skipped."""
    return sorted(entry.name for entry in class_entries(folder))


_folders_listed = 0


def image_files(folder: str | os.PathLike[str]) -> list[str]:
    """The sorted names of the image files in `folder`: regular files (or links to them)
    with an image extension. A FIFO or a link to a device (/dev/zero) would block or never
    end the first read of it, so such entries are not images, whatever their name."""
    global _folders_listed
    _folders_listed += 1
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file())


def folders_listed() -> int:
    """How many folders this process has listed for image files: the work an index saves."""
    return _folders_listed


@dataclass(frozen=True)
class TreeState:
    """What changes when a class folder or an image in one is added, removed or renamed:
    the sorted class-folder names, and the (mtime in ns, inode, size) of the folder itself
    then of each class folder, in that order (an inode tells a folder swapped for another)."""

    classes: tuple[str, ...]
    stamps: tuple[tuple[int, int, int], ...]

    def newest(self) -> int:
        return max(mtime for mtime, _, _ in self.stamps)


def tree_state(folder: Path) -> TreeState:
    def stamp(entry: os.DirEntry | Path) -> tuple[int, int, int]:
        stat = entry.stat()
        return stat.st_mtime_ns, stat.st_ino, stat.st_size

    entries = sorted(class_entries(folder), key=lambda e: e.name)
    return TreeState(tuple(e.name for e in entries),
                     (stamp(folder), *(stamp(e) for e in entries)))


@dataclass(frozen=True)
class Listing:
    """A folder's image files: for "classes", the sorted class names, the number of images
    in each, and their paths ``<class>/<name>`` class by class, names sorted; for "flat",
    no classes and the sorted image names. ``state`` is the tree state it was taken in."""

    classes: tuple[str, ...]
    counts: np.ndarray  # int64, images per class
    files: FileList  # relative to the listed folder
    state: TreeState


def _list(folder: Path, kind: str, state: TreeState) -> Listing:
    if kind == "flat":
        return Listing((), np.zeros(0, np.int64), FileList.of(image_files(folder)), state)
    found = [image_files(folder / name) for name in state.classes]
    return Listing(state.classes, np.array([len(f) for f in found], np.int64),
                   FileList.of(f"{name}/{file}" for name, files in zip(state.classes, found,
                                                                      strict=True)
                               for file in files), state)


# ------------------------------------------------------------------ the index on disk

def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vgg" / "index"


def index_files(folder: Path, kind: str) -> list[Path]:
    """Where the index of `folder` may be: beside it, then in the user's cache (named by the
    folder's real path, since one cache serves many data sets)."""
    real = Path(os.path.realpath(folder))
    name = f".{real.name}.vgg-index-{kind}.npz"
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    return [real.parent / name, user_cache() / f"{digest}{name}"]


def offsets_of(names: FileList) -> np.ndarray:
    """The offsets ``FileList.from_offsets`` takes, of a list made by ``FileList.of``."""
    return np.concatenate([np.zeros(1, np.int64), names.ends])


def _write(path: Path, listing: Listing) -> None:
    classes, files = FileList.of(listing.state.classes), listing.files
    path.parent.mkdir(parents=True, exist_ok=True)
    with replace_atomically(path, "wb") as f:
        np.savez(f, format=np.int64(FORMAT), class_names=classes.buffer,
                 class_offsets=offsets_of(classes),
                 stamps=np.array(listing.state.stamps, np.int64), counts=listing.counts,
                 paths=files.buffer, offsets=offsets_of(files))


class DamagedIndex(ValueError):
    """An index file whose arrays do not fit together."""


def stored_names(data: np.lib.npyio.NpzFile, buffer: str, offsets: str) -> FileList:
    """The names stored as ``data[buffer]`` cut at ``data[offsets]``, checked to fit."""
    values, bounds = data[buffer], data[offsets]
    if values.dtype != np.uint8 or values.ndim != 1 or bounds.dtype != np.int64 \
            or bounds.ndim != 1 or len(bounds) < 1 or bounds[0] != 0 \
            or bounds[-1] != len(values) or (np.diff(bounds) < 0).any():
        raise DamagedIndex(f"{buffer} and {offsets} do not fit together")
    return FileList.from_offsets(values, bounds)


def _read(path: Path, kind: str, state: TreeState) -> Listing | None:
    """The listing stored in `path` if it was taken in `state`; None if it was not (the tree
    changed, or another version wrote it). DamagedIndex or numpy's errors if damaged."""
    with np.load(path, allow_pickle=False) as data:
        if data["format"].shape != () or int(data["format"]) != FORMAT:
            return None
        classes = tuple(stored_names(data, "class_names", "class_offsets"))
        stamps = data["stamps"]
        if stamps.dtype != np.int64 or stamps.shape != (len(classes) + 1, 3):
            raise DamagedIndex("its tree state has the wrong shape")
        if TreeState(classes, tuple(map(tuple, stamps.tolist()))) != state:
            return None
        counts, files = data["counts"], stored_names(data, "paths", "offsets")
        if counts.dtype != np.int64 or counts.shape != (0 if kind == "flat" else len(classes),) \
                or (counts < 0).any() or (kind != "flat" and counts.sum() != len(files)):
            raise DamagedIndex("its class sizes do not add up to its files")
        return Listing(classes, counts, files, state)


def read_index(folder: Path, kind: str, state: TreeState) -> Listing | None:
    """The listing of `folder` taken in `state` from an index file, if one holds it."""
    for path in index_files(folder, kind):
        if not path.is_file():
            continue
        try:
            listing = _read(path, kind, state)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
            warn(f"the file index {path} is damaged ({type(error).__name__}: {error}); "
                 f"ignoring it: {folder} is listed again and a new index written")
            continue
        if listing is not None:
            return listing
    return None


def write_index(folder: Path, kind: str, listing: Listing) -> None:
    """Store `listing` beside `folder`, or in the user's cache where that is read-only; a
    warning, never an error, where neither can be written."""
    failures = []
    for path in index_files(folder, kind):
        try:
            _write(path, listing)
            return
        except OSError as error:  # WriteError too: a read-only folder, a full disk
            failures.append(f"{path.parent}: {error}")
    warn(f"could not write the file index of {folder} ({'; '.join(failures)}); it will be "
         "listed again at the next start")


# ------------------------------------------------------------------ once per job

_listings: dict[tuple[str, str], Listing] = {}


def _listing(folder: Path, kind: str) -> Listing:
    started = time.time_ns()
    state = tree_state(folder)
    key = (os.path.abspath(folder), kind)
    kept = _listings.get(key)
    if kept is not None and kept.state == state:
        return kept
    listing = read_index(folder, kind, state)
    if listing is None:
        listing = _list(folder, kind, state)
        if state.newest() >= started - SETTLED_SECONDS * 1e9:
            return listing  # not settled: neither kept nor written
        write_index(folder, kind, listing)
    _listings[key] = listing
    return listing


def list_folder(folder: Path, kind: str = "classes") -> Listing:
    """The listing of `folder`, `kind` "classes" (the images in each class sub-folder:
    train/, val/<class>/) or "flat" (the images in `folder` itself: ImageNet's val/ as
    released): kept from earlier in this process, read from its index, or taken and stored,
    while the tree is unchanged (``tree_state``) and settled (``SETTLED_SECONDS``). In a
    distributed job every rank calls it for the same folders in the same order (they build
    the same data sets): rank 0 lists while the others wait, then they read its index (or
    list for themselves where it could write none: a folder changed seconds ago, a cache on
    another node's disk)."""
    if is_main():
        try:
            return _listing(folder, kind)
        finally:
            barrier()  # also after an error, which the others then meet for themselves
    barrier()
    return _listing(folder, kind)
