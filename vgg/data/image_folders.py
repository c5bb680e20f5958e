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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vgg.data.decoding import IMAGE_EXTENSIONS
from vgg.data.errors import DatasetError, DatasetNotFoundError
from vgg.data.files import data_root_hint
from vgg.data.imageset import ImageSet
from vgg.data.listing import class_names, list_folder
from vgg.data.registry import DatasetSpec, Reader
from vgg.data.statistics import image_statistics


def class_folders(folder: Path, classes: Sequence[str] | None = None) -> ImageSet:
    """The image files in the class sub-folders of `folder`. Without `classes` they are a
    training set: its classes are the folders' sorted names, at least two, none empty. With
    `classes` (the training set's), images are labelled by folder name, and a folder whose
    name is not among them is an error."""
    listing = list_folder(folder)
    names = list(listing.classes)
    if classes is not None and set(names) - set(classes):
        unknown = ", ".join(sorted(set(names) - set(classes)))
        raise DatasetError(f"{folder} holds class folder(s) {unknown} that the training set "
                           f"does not have (its classes: {', '.join(classes)}): a network "
                           "cannot predict a class it was not trained on; remove them, or "
                           "add them to train/ and train again")
    label_of_name = {name: label for label, name in enumerate(classes or names)}
    labels = np.repeat(np.array([label_of_name[name] for name in names], np.int64),
                       listing.counts)
    empty = [name for name, count in zip(names, listing.counts, strict=True) if not count]
    if not len(labels):
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
    return ImageSet(listing.files.under(folder), labels, tuple(classes or names))


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
