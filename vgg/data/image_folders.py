"""Datasets stored as image files in class sub-folders: reading one split's files and labels,
and the ImageFolder reader with the meaning of its three layouts.

Layouts of an ImageFolder (the folder given as data root):

- ``train/ val/ test/``: train/ trains, val/ takes the plateau decisions and chooses the
  best checkpoint, test/ is what evaluate.py scores: the only unbiased number. The
  validation folder may also be named validation/ (timm's and Hugging Face's name) or
  valid/; two of these names side by side are an error, as which one validates is unclear.
- ``train/ val/``: the same, but no images are left for an unbiased score: asking for the
  test split says so and offers the choices.
- ``train/`` alone, or the class folders directly in the data root: a seeded share of the
  training images is held out as the validation split (--val_fraction, 10% by default);
  there is no test split.

Class labels index the sorted class-folder names of the training images (hidden folders
such as .ipynb_checkpoints are ignored). val/ and test/ are labelled by those names: they
may lack a class, but a class the training set does not have is an error naming it. A
training set needs at least two classes, each with images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgg.data.decoding import IMAGE_EXTENSIONS
from vgg.data.errors import DatasetError, DatasetNotFoundError
from vgg.data.files import data_root_hint
from vgg.data.imageset import ImageSet
from vgg.data.registry import DatasetSpec, Reader
from vgg.data.statistics import image_statistics


def class_entries(folder: Path) -> list[os.DirEntry]:
    """The class sub-folders of `folder`, unsorted; hidden ones (.ipynb_checkpoints) skipped."""
    return [entry for entry in os.scandir(folder)
            if entry.is_dir() and not entry.name.startswith(".")]


def class_names(folder: Path) -> list[str]:
    """The sorted names of the class sub-folders of `folder`, hidden ones skipped."""
    return sorted(entry.name for entry in class_entries(folder))


def image_files(folder: str | os.PathLike[str]) -> list[str]:
    """The sorted names of the image files in `folder`: regular files (or links to them)
    with an image extension. A FIFO or a link to a device (/dev/zero) would block or never
    end the first read of it, so such entries are not images, whatever their name."""
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file())


def paths(folder: Path, names: Sequence[str]) -> list[str]:
    """``str(folder / name)`` for each of `names`, by string joins: a Path per file costs
    microseconds, minutes over ImageNet's train/ at every start."""
    prefix = str(folder / "_")[:-1]  # folder's normal form and a separator ("" for ".")
    return [prefix + name for name in names]


@dataclass(frozen=True)
class Listing:
    """The image files of a folder of class sub-folders, as names: the sorted class names
    and, per class, its sorted image file names. ``state`` is the tree state it was taken
    in (see ``tree_state``)."""

    classes: tuple[str, ...]
    files: tuple[list[str], ...]
    state: tuple


# One listing per folder and process: train.py reads train/ three times (the measured
# statistics, the training split, the held-out validation split), and listing 1.28M
# ImageNet files takes minutes. A cached index on disk would be keyed by the same state.
_listings: dict[str, Listing] = {}

# A folder modified within this many seconds of being listed may be modified again within
# the same mtime tick (coarse clocks, FAT's 2 s) without its state changing, so it is
# listed again next time rather than trusted (git's "racily clean" rule).
SETTLED_SECONDS = 2.0


def tree_state(folder: Path) -> tuple:
    """What changes when a class folder or an image in one is added, removed or renamed:
    the modification times (and inode numbers: a folder swapped for another) of `folder`
    and of each class sub-folder, by class name in sorted order."""
    def stamp(entry: os.DirEntry | Path) -> tuple[int, int]:
        stat = entry.stat()
        return stat.st_mtime_ns, stat.st_ino

    return stamp(folder), tuple(sorted((e.name, stamp(e)) for e in class_entries(folder)))


def list_class_folders(folder: Path) -> Listing:
    """The listing of `folder`'s class sub-folders, taken once per process while the tree
    is unchanged (``tree_state``) and settled (``SETTLED_SECONDS``)."""
    started = time.time_ns()
    state = tree_state(folder)
    key = os.path.abspath(folder)
    cached = _listings.get(key)
    if cached is not None and cached.state == state:
        return cached
    folder_stamp, class_stamps = state
    names = tuple(name for name, _ in class_stamps)  # class_names(folder)
    listing = Listing(names, tuple(image_files(folder / name) for name in names), state)
    newest = max([folder_stamp[0]] + [mtime for _, (mtime, _) in class_stamps])
    if newest < started - SETTLED_SECONDS * 1e9:
        _listings[key] = listing
    return listing


def class_folders(folder: Path, classes: Sequence[str] | None = None) -> ImageSet:
    """The image files in the class sub-folders of `folder`. Without `classes` they are a
    training set: its classes are the folders' sorted names, at least two, none empty. With
    `classes` (the training set's), images are labelled by folder name, and a folder whose
    name is not among them is an error."""
    listing = list_class_folders(folder)
    names = list(listing.classes)
    if classes is not None and set(names) - set(classes):
        unknown = ", ".join(sorted(set(names) - set(classes)))
        raise DatasetError(f"{folder} holds class folder(s) {unknown} that the training set "
                           f"does not have (its classes: {', '.join(classes)}): a network "
                           "cannot predict a class it was not trained on; remove them, or "
                           "add them to train/ and train again")
    label_of_name = {name: label for label, name in enumerate(classes or names)}
    files, labels, empty = [], [], []
    for name, found in zip(names, listing.files, strict=True):
        files += paths(folder / name, found)
        labels += [label_of_name[name]] * len(found)
        empty += [] if found else [name]
    if not files:
        raise DatasetNotFoundError(f"no images in class sub-folders of {folder} (expected "
                                   f"{folder}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}})")
    if classes is None and len(names) < 2:
        raise DatasetError(f"{folder} has one class folder ({names[0]}), and a classifier "
                           "needs at least two: put each class's images in a sub-folder of "
                           f"its own ({folder}/<class>/<image>)")
    if classes is None and empty:
        raise DatasetError(f"class folder(s) {', '.join(empty)} in {folder} hold no images "
                           f"(of {', '.join(IMAGE_EXTENSIONS)}): a class needs training "
                           "images; fill or remove them")
    return ImageSet(files, np.array(labels, dtype=np.int64), tuple(classes or names))


VALIDATION_FOLDERS = ("val", "validation", "valid")  # the names the common tools write


def validation_folder(folder: Path) -> str | None:
    """The name of ``folder``'s validation sub-folder (one of VALIDATION_FOLDERS), or None."""
    present = [name for name in VALIDATION_FOLDERS if (folder / name).is_dir()]
    if len(present) > 1:
        raise DatasetError(f"{folder} has {' and '.join(f'{name}/' for name in present)}: "
                           "each is a validation split, and which one should choose the "
                           "checkpoint is unclear; keep one (merge or rename the others)")
    return present[0] if present else None


def _no_test_split(folder: Path, has_train: bool) -> DatasetNotFoundError:
    if val := validation_folder(folder):
        holds = (f"train/ and {val}/, and {val}/ chose the checkpoint (and the learning-rate "
                 "drops)")
        retrain = f"rename {val}/ to test/ and train again, so that a held-out share of train/ "
    else:
        where = "train/" if has_train else "class folders"
        holds = (f"only {where}, a seeded share of which was held out as the validation split "
                 "that chose the checkpoint")
        retrain = "put new images there, "
    return DatasetNotFoundError(
        f"{folder} has no test/ folder, so no images are left for an unbiased score: it holds "
        f"{holds}. Either score the validation split with evaluate.py --split val, knowing "
        f"the number is optimistic since it chose the checkpoint, or give the dataset a test "
        f"split: {folder}/test/<class>/ ({retrain}untouched by training and model choice)")


def image_folder_reader(subfolder: str = "") -> Reader:
    """Reader of images in class sub-folders under <root>/<subfolder>, in any of the three
    layouts this module's docstring describes."""

    def read(root: Path, part: str, download: bool) -> ImageSet | None:
        folder = root / subfolder
        if not folder.is_dir():
            raise DatasetNotFoundError(f"image folder not found: looked for {folder}; "
                                       + data_root_hint("the class sub-folders"))
        if not (folder / "train").is_dir():
            # Split folders without train/ are a mistake, not classes; "valid" is left out,
            # a likely class name (valid/ invalid/).
            strays = [f"{s}/" for s in ("val", "validation", "test") if (folder / s).is_dir()]
            if strays:
                raise DatasetNotFoundError(
                    f"{folder} has {' and '.join(strays)} but no train/ folder: put the "
                    f"training images in {folder}/train/<class>/")
            if part == "test":
                raise _no_test_split(folder, has_train=False)
            return None if part == "val" else class_folders(folder)
        if part == "train":
            return class_folders(folder / "train")
        if part == "val":
            val = validation_folder(folder)
            if val is None:
                return None  # a share of train/ is held out instead
            part = val
        elif not (folder / part).is_dir():
            raise _no_test_split(folder, has_train=True)
        split = folder / part
        # Labelled by train/'s classes; when train/ has moved away (evaluating a trained
        # network elsewhere), by the split's own folders, relabelled by the caller.
        return class_folders(split, class_names(folder / "train") or class_names(split))

    return read


def image_folder_spec(train: ImageSet) -> DatasetSpec:
    """Spec of an ImageFolder, its normalisation measured on its training images (never on
    the ones held out for validation)."""
    mean, std = image_statistics(train.images)
    return DatasetSpec("ImageFolder", len(train.classes), 3, 224, mean, std, hflip=True,
                       train_scale=(256, 256))
