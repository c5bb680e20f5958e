"""Small datasets written in the real on-disk formats, for tests of loading, training and
evaluation without the real data.

Every image carries its own truth in its pixels, so a test can check what a loader returns
without trusting the loader: array images (MNIST, CIFAR) are filled with `label_value(label)`
and store their index in the split in the first two pixels of the top row
(`encoded_index`); image files are filled with `class_color(label)`.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import scipy.io

MNIST_FILES = {"train": "train", "test": "t10k"}


def label_value(label: int) -> int:
    """Fill value of an array image of class `label` (< 100), away from the index pixels."""
    return 50 + 2 * label


def encoded_index(image: np.ndarray) -> int:
    """The index in its split that an array image stores in its top row (any channel 0)."""
    row = image[0] if image.ndim == 2 else image[0, :, 0]
    return int(row[0]) * 256 + int(row[1])


def class_color(label: int) -> tuple[int, int, int]:
    """RGB fill of an image file of class `label` (< 16), colours >= 60 levels apart so that
    JPEG compression cannot confuse them."""
    return 30 + 60 * (label % 4), 30 + 60 * (label // 4), 128


def _array_images(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    images = np.empty((len(labels), *shape), dtype=np.uint8)
    images[:] = label_value(labels).reshape(-1, *[1] * len(shape))
    images[:, 0, 0], images[:, 0, 1] = np.arange(len(labels)) // 256, np.arange(len(labels)) % 256
    return images


def write_mnist(root: str | Path, n_train: int, n_test: int, folder: str = "MNIST",
                seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST's four gzipped idx files in torchvision's layout, <root>/<folder>/raw/ (folder
    "FashionMNIST" for FashionMNIST). Returns the labels written, per split."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {"train": rng.integers(0, 10, n_train), "test": rng.integers(0, 10, n_test)}
    for split, prefix in MNIST_FILES.items():
        images = _array_images(labels[split], (28, 28))
        header = b"\x00\x00\x08\x03" + np.array(images.shape, ">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + images.tobytes()))
        header = b"\x00\x00\x08\x01" + np.array([len(labels[split])], ">i4").tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(header + labels[split].astype(np.uint8).tobytes()))
    return labels


def write_cifar(root: str | Path, n_train: int, n_test: int, cifar100: bool = False,
                seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10 (5 training batches) or CIFAR-100 as the python pickles of the official
    archive, in <root>/cifar-10-batches-py/ or <root>/cifar-100-python/. Channel planes are
    R = label_value(label), G = 255 - R, B = 7, so a wrong channel order shows. Returns the
    labels written, per split."""
    num_classes = 100 if cifar100 else 10
    folder = Path(root) / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {"train": rng.integers(0, num_classes, n_train),
              "test": rng.integers(0, num_classes, n_test)}
    label_key = b"fine_labels" if cifar100 else b"labels"
    batches = {"train": ["train"], "test": ["test"]} if cifar100 else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in batches.items():
        planes = _array_images(labels[split], (32, 32))
        images = np.stack([planes, 255 - planes, np.full_like(planes, 7)], axis=1)
        for name, part in zip(names, np.array_split(np.arange(len(labels[split])), len(names)),
                              strict=True):
            batch = {b"data": images[part].reshape(len(part), -1),
                     label_key: labels[split][part].tolist()}
            (folder / name).write_bytes(pickle.dumps(batch))
    class_names = [f"class{c}".encode() for c in range(num_classes)]
    meta = {b"fine_label_names": class_names} if cifar100 else {b"label_names": class_names}
    (folder / ("meta" if cifar100 else "batches.meta")).write_bytes(pickle.dumps(meta))
    return labels


def _write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int]) -> None:
    """A `size` = (height, width) image file filled with RGB `color`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = color[::-1]  # OpenCV writes BGR
    cv2.imwrite(str(path), image)


def write_image_folder(root: str | Path, classes: Sequence[str], per_class: int,
                       size: tuple[int, int] = (24, 32), splits: Sequence[str] = ("train", "test"),
                       extension: str = ".png") -> None:
    """<root>/<split>/<class>/<i><extension> for each split, or with splits=() the class
    folders directly in <root>; images of class c are filled with class_color(c)."""
    for split in splits or [""]:
        for label, name in enumerate(classes):
            for i in range(per_class):
                _write_image(Path(root) / split / name / f"{i}{extension}",
                             class_color(label), size)


def write_imagenet_folders(root: str | Path, classes: Sequence[str], per_class: int,
                           size: tuple[int, int] = (30, 40), devkit: bool = False) -> None:
    """ILSVRC-2012 in <root>: train/<wnid>/<wnid>_<i>.JPEG and, for the validation set, either
    val/<wnid>/*.JPEG or, with `devkit`, the release layout: flat val/ILSVRC2012_val_<n>.JPEG
    plus ILSVRC2012_devkit_t12.tar.gz whose meta.mat numbers the classes (ILSVRC2012_ID) in
    reverse wnid order, with one non-leaf synset, and whose ground truth labels val by ID.
    Image colours follow class_color of the wnid's position in sorted(classes)."""
    root = Path(root)
    wnids = sorted(classes)
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            _write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", class_color(label), size)
    val_labels = [label for label in range(len(wnids)) for _ in range(per_class)]
    np.random.default_rng(0).shuffle(val_labels)
    for n, label in enumerate(val_labels, start=1):
        path = (root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG" if devkit
                else root / "val" / wnids[label] / f"ILSVRC2012_val_{n:08d}.JPEG")
        _write_image(path, class_color(label), size)
    if devkit:
        ids = {wnid: len(wnids) - label for label, wnid in enumerate(wnids)}
        _write_devkit(root / "ILSVRC2012_devkit_t12.tar.gz", ids,
                      [ids[wnids[label]] for label in val_labels])


def _write_devkit(path: Path, ids: dict[str, int], ground_truth: Sequence[int]) -> None:
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    rows = [(i, wnid, f"thing {wnid}", "a thing", 0, np.zeros(0), 0, 1300)
            for wnid, i in ids.items()]
    rows.append((len(ids) + 1, "n00000001", "entity", "everything", len(ids),
                 np.array(list(ids.values())), 1, 0))
    synsets = np.array(rows, dtype=[(f, object) for f in fields])
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{i}\n" for i in ground_truth).encode()
    with tarfile.open(path, "w:gz") as archive:
        for name, data in [("data/meta.mat", meta.getvalue()),
                           ("data/ILSVRC2012_validation_ground_truth.txt", truth)]:
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def settle(root: str | Path, when: int = 1_700_000_000) -> None:
    """Date every folder under ``root`` to one fixed moment (in 2023 by default), as a tree
    nobody is writing to: a listing of a folder modified within seconds is not trusted for
    reuse (vgg/data/listing.py)."""
    for folder in [Path(root), *(p for p in Path(root).rglob("*") if p.is_dir())]:
        os.utime(folder, (when, when))
