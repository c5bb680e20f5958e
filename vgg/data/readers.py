"""Readers of the array datasets' file formats: MNIST's idx files, CIFAR's python pickles
(through an unpickler that builds arrays and nothing else) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torchvision

from vgg.data.errors import DatasetError
from vgg.data.files import require
from vgg.data.imageset import ImageSet, holdout
from vgg.data.registry import Reader

# ----------------------------------------------------------------------------- MNIST


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The `ndim`-dimensional uint8 array of an idx file (the MNIST format), gzipped or not;
    a DatasetError if the file is damaged, truncated or of another kind."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:  # a truncated .gz ends in EOFError
        raise DatasetError(f"{path} cannot be read ({type(error).__name__}: {error}); "
                           "it is damaged or truncated: download it again") from None
    header = 4 + 4 * ndim
    expected = bytes([0, 0, 8, ndim])  # zero, zero, uint8 elements, number of dimensions
    if len(data) < header or data[:4] != expected:
        raise DatasetError(f"{path} is not an idx file of {ndim}-d uint8 data: it starts "
                           f"with {data[:4].hex(' ') or 'nothing'}, not {expected.hex(' ')}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    if len(data) - header != math.prod(shape):
        raise DatasetError(f"{path} holds {len(data) - header} bytes of data but its header "
                           f"announces shape {shape}, {math.prod(shape)} bytes: it is "
                           "truncated or damaged; download it again")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def mnist_reader(folder: str, classes: Sequence[str],
                 torchvision_class: type[torchvision.datasets.MNIST]) -> Reader:
    """Reader of an MNIST-format dataset in torchvision's layout, <root>/<folder>/raw/. The
    28x28 images are padded with background to 32x32, as LeCun et al. (1998) fed LeNet-5,
    since VGG downsamples by 32."""

    def read(root: Path, part: str, download: bool) -> ImageSet | None:
        if part == "val":
            return None
        prefix = "train" if part == "train" else "t10k"
        raw = root / folder / "raw"
        urls = [torchvision_class.mirrors[0] + name for name, _ in torchvision_class.resources]
        images_file, labels_file = require(
            folder, raw, [f"{prefix}-images-idx3-ubyte(.gz)", f"{prefix}-labels-idx1-ubyte(.gz)"],
            f"{folder}/raw", (lambda: torchvision_class(root, download=True)) if download else None,
            f"Without internet access, fetch {', '.join(urls)} and put them in {raw}/.")
        images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
        if len(images) != len(labels):
            raise DatasetError(f"{images_file} holds {len(images)} images but {labels_file} "
                               f"{len(labels)} labels: download them again")
        return ImageSet(np.pad(images, ((0, 0), (2, 2), (2, 2))), labels.astype(np.int64),
                        tuple(classes))

    return read


# ----------------------------------------------------------------------------- CIFAR

# The globals a pickled numpy array refers to (numpy 1's and numpy 2's module names, and
# protocol 5's buffer path), and the bytes codec of protocol-2 pickles written by Python 3.
# Anything else in a data file would be code that loading it makes us run.
ARRAY_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"{package}.{module}", name) for package in ("numpy.core", "numpy._core")
      for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))),
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referred to a function or class outside ARRAY_PICKLE_GLOBALS."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds builtin containers, bytes, numbers and numpy arrays only: any
    other function or class a file names is refused before anything is called."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ARRAY_PICKLE_GLOBALS:
            raise ForbiddenGlobalError(f"{module}.{name}")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def load_array_pickle(path: Path, source: str) -> object:
    """The builtin containers and numpy arrays pickled in `path` (Python 2 strings as bytes,
    as CIFAR's files need); a DatasetError naming the file if it is truncated, damaged or
    refers to anything else (code), in which case nothing of it runs. `source` says where to
    get the file again."""
    try:
        with open(path, "rb") as file:
            return ArrayUnpickler(file, encoding="bytes").load()
    except ForbiddenGlobalError as error:
        raise DatasetError(f"{path} refers to {error}, which a data file never needs: it was "
                           "not loaded, since unpickling it would run code from the file. "
                           f"Get the dataset again from {source}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetError(f"{path} is truncated or damaged ({type(error).__name__}: "
                           f"{error}); get it again from {source}") from None


def cifar_reader(title: str, folder: str, batches: dict[str, list[str]], meta: str,
                 names_key: bytes, labels_key: bytes,
                 torchvision_class: type[torchvision.datasets.CIFAR10]) -> Reader:
    """Reader of a CIFAR dataset in its python pickle format, <root>/<folder>/."""

    def read(root: Path, part: str, download: bool) -> ImageSet | None:
        if part == "val":
            return None
        url = torchvision_class.url
        *batch_files, meta_file = require(
            title, root / folder, [*batches[part], meta], folder,
            (lambda: torchvision_class(root, download=True)) if download else None,
            f"Without internet access, fetch {url} and extract it in {root}, which gives "
            f"{root / folder}/.")
        # Any: whatever was pickled; the try below turns a wrong layout into a DatasetError.
        loaded: list[Any] = [load_array_pickle(path, url)
                             for path in [*batch_files, meta_file]]
        *parts, names = loaded
        try:
            images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
            labels = np.concatenate([p[labels_key] for p in parts]).astype(np.int64)
            classes = tuple(n.decode() for n in names[names_key])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise DatasetError(f"the files in {root / folder} are not {title}'s python "
                               f"batches ({type(error).__name__}: {error}); get them again "
                               f"from {url}") from None
        if len(images) != len(labels) or images.dtype != np.uint8:
            raise DatasetError(f"{root / folder} holds {len(images)} images of "
                               f"{images.dtype} for {len(labels)} labels; get it again from "
                               f"{url}")
        return ImageSet(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels, classes)

    return read


# ---------------------------------------------------------------------------- Digits

# Digits has no official test split: a fixed 20% is held out with a fixed seed, the same
# whatever the validation seed, so its test set never moves.
DIGITS_TEST_FRACTION, DIGITS_TEST_SEED = 0.2, 0


def read_digits(root: Path, part: str, download: bool) -> ImageSet | None:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels), so a
    quickstart runs offline; `root` and `download` are not needed."""
    if part == "val":
        return None
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    everything = ImageSet(images, digits.target.astype(np.int64),
                          tuple(str(d) for d in range(10)))
    train, test = holdout(len(everything), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return everything.subset(train if part == "train" else test)
