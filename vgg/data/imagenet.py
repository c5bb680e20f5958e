"""The ILSVRC-2012 reader: train/<wnid>/ class folders, and the official validation set
either in class folders or flat as released, labelled by the devkit's ground truth."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import scipy.io

from vgg.data.errors import DatasetError, DatasetNotFoundError
from vgg.data.files import data_root_hint
from vgg.data.image_folders import class_folders
from vgg.data.imageset import ImageSet
from vgg.data.listing import class_names, list_folder

DEVKIT = "ILSVRC2012_devkit_t12"


def _devkit_file(folder: Path, member: str) -> bytes:
    """A file of the ILSVRC-2012 devkit, extracted or still in its .tar.gz."""
    if (folder / DEVKIT / member).is_file():
        return (folder / DEVKIT / member).read_bytes()
    archive_path = folder / f"{DEVKIT}.tar.gz"
    if not archive_path.is_file():
        raise DatasetNotFoundError(
            f"{folder / 'val'} holds the validation images flat, as released, and their "
            f"labels come from the devkit: put {DEVKIT}.tar.gz (or its extracted folder) in "
            f"{folder}, or sort val/ into val/<wnid>/ folders")
    try:
        with tarfile.open(archive_path) as archive:
            contents = archive.extractfile(f"{DEVKIT}/{member}")
            if contents is None:  # a directory or link of that name, not a file
                raise tarfile.TarError(f"{DEVKIT}/{member} is not a file")
            return contents.read()
    except (tarfile.TarError, KeyError, EOFError, OSError) as error:
        raise DatasetError(f"{archive_path} lacks {member} or is damaged "
                           f"({type(error).__name__}: {error}); get it again") from None


def _val_from_devkit(folder: Path) -> ImageSet:
    """The official validation images as released, flat in val/, labelled by the devkit's
    ground truth (ILSVRC2012_IDs, mapped to wnids through meta.mat). Labels index the sorted
    wnids, the class order of the class folders and of torchvision's weights."""
    synsets = scipy.io.loadmat(io.BytesIO(_devkit_file(folder, "data/meta.mat")),
                               squeeze_me=True)["synsets"]
    wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
                  if int(s["num_children"]) == 0}  # the 1000 leaves; the rest are ancestors
    ground_truth = _devkit_file(folder, "data/ILSVRC2012_validation_ground_truth.txt").split()
    files = list_folder(folder / "val", "flat").files
    if len(files) != len(ground_truth):
        raise DatasetError(f"{folder / 'val'} holds {len(files)} images but the devkit labels "
                           f"{len(ground_truth)}: the validation set is incomplete")
    classes = tuple(sorted(wnid_of_id.values()))
    label_of_wnid = {wnid: label for label, wnid in enumerate(classes)}
    labels = [label_of_wnid[wnid_of_id[int(i)]] for i in ground_truth]
    return ImageSet(files.under(folder / "val"), np.array(labels, dtype=np.int64), classes)


def read_imagenet(root: Path, part: str, download: bool) -> ImageSet | None:
    """ILSVRC-2012 in <root>/ImageNet/ (or <root> itself): train/<wnid>/*.JPEG, and val/
    either as val/<wnid>/*.JPEG (torchvision.datasets.ImageNet's layout, and the common one)
    or as released, flat val/*.JPEG with ILSVRC2012_devkit_t12(.tar.gz) beside it.

    "val" and "test" are both the official validation set: the paper took its plateau
    decisions on it and reported its error (there is no public test set). build_dataset
    holds a share of train/ out as "val" instead when asked (--val_fraction)."""
    subfolder = "train" if part == "train" else "val"
    places = [root / "ImageNet", root]
    folder = next((f for f in places if (f / subfolder).is_dir()), None)
    if folder is None:
        raise DatasetNotFoundError(
            f"ImageNet not found: looked for {' and '.join(str(f / subfolder) for f in places)}"
            f"; expected {subfolder}/<wnid>/*.JPEG"
            + ("" if part == "train" else f" or flat val/*.JPEG with {DEVKIT}(.tar.gz)")
            + ("; to train without the official validation set, pass --val_fraction 0.1 "
               "(10% of train/ held out)" if part == "val" else "")
            + "; ImageNet cannot be downloaded automatically: get ILSVRC-2012 from "
              "https://image-net.org/ and " + data_root_hint("ImageNet/"))
    if part == "train":
        return class_folders(folder / "train")
    if not any(e.is_dir() for e in os.scandir(folder / "val")):
        return _val_from_devkit(folder)
    # Labelled by the training classes where they are here (a val/ missing a class keeps
    # the numbering), else by val/'s own folders (evaluation without train/).
    classes = class_names(folder / "train") if (folder / "train").is_dir() else None
    return class_folders(folder / "val", classes)
