"""Every dataset by name: its files, splits, statistics, transforms and loaders.

Each registered dataset knows its classes, channels, training resolution and normalisation
(`DatasetSpec`), so a model is never configured by hand:

    spec = dataset_spec("Cifar10")
    train = build_dataset("Cifar10", "train", "data", train_transform(spec, spec.image_size))
    loader = build_loader(train, 128, train=True, workers=4)

Splits are "train", "val" and "test". Where the source has no validation split (MNIST,
FashionMNIST, CIFAR, Digits, ImageNet, an ImageFolder without val/) a fixed, seeded fraction
of the training set is held out as "val", so the learning-rate schedule and checkpoint
selection never see the test set. ImageNet's official validation set is its "test" split.

Normalisation: per channel, (pixel / 255 - mean) / std with the dataset's own training-set
statistics at native resolution. The paper subtracts the mean RGB only; dividing by a
per-channel constant as well only rescales the first layer's input, keeping inputs at unit
scale whatever the dataset.

Adding a dataset takes one `register` call at the end of this file (see README).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vgg.distributed import ShardSampler
from vgg.errors import UserError
from vgg.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    single_test_scale,
)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int  # network input side trained at by default (a multiple of 32)
    mean: tuple[float, ...]  # per channel, pixel values scaled to [0, 1]
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


@dataclass(frozen=True)
class ImageSet:
    """Labelled images of one split: a uint8 array in memory, (N, H, W) or (N, H, W, 3), or
    a list of image files decoded on access."""

    images: np.ndarray | list[str]
    labels: np.ndarray  # int64, indices into classes
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        images = (self.images[indices] if isinstance(self.images, np.ndarray)
                  else [self.images[i] for i in indices])
        return ImageSet(images, self.labels[indices], self.classes)


# A reader returns a dataset's "train" or "test" split from a data root, or its own "val"
# split, None where the source has none; its last argument asks it to download if missing.
Reader = Callable[[Path, str, bool], ImageSet | None]


@dataclass(frozen=True)
class Registered:
    spec: DatasetSpec | Callable[[Path], DatasetSpec]  # a callable derives it from the files
    read: Reader


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are missing; the message says where we looked and what to do."""


class UnreadableImageError(UserError, OSError):
    """An image file could not be decoded (raised with on_corrupt="error")."""


DATASETS: dict[str, Registered] = {}


def register(name: str, spec: DatasetSpec | Callable[[Path], DatasetSpec], read: Reader,
             aliases: Sequence[str] = ()) -> None:
    """Make a dataset available by `name` (and `aliases`) to dataset_spec and build_dataset."""
    for key in (name, *aliases):
        DATASETS[key] = Registered(spec, read)


def _registered(name: str) -> Registered:
    by_lower_name = {key.lower(): entry for key, entry in DATASETS.items()}
    if name.lower() not in by_lower_name:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return by_lower_name[name.lower()]


def dataset_spec(name: str, root: str | os.PathLike | None = None) -> DatasetSpec:
    """The spec of a registered dataset (names are case-insensitive). A dataset defined by its
    files (ImageFolder) needs `root` to count its classes and measure its statistics."""
    spec = _registered(name).spec
    if isinstance(spec, DatasetSpec):
        return spec
    if root is None:
        raise ValueError(f"{name}'s classes and statistics come from its files: "
                         f"call dataset_spec({name!r}, root)")
    return spec(Path(root))


# ---------------------------------------------------------------- finding and fetching files


def _find(folder: Path, pattern: str) -> Path | None:
    """The file `pattern` names in `folder`; "x(.gz)" means x or x.gz, preferring x."""
    plain = pattern.removesuffix("(.gz)")
    candidates = [plain, plain + ".gz"] if plain != pattern else [plain]
    return next((folder / c for c in candidates if (folder / c).is_file()), None)


def _require(name: str, folder: Path, patterns: Sequence[str], hint: str,
             download: Callable[[], object] | None = None) -> list[Path]:
    """Paths of the files `patterns` name in `folder`, downloading them first if `download` is
    given and any is missing; otherwise a DatasetNotFoundError saying what and where."""
    found = [_find(folder, p) for p in patterns]
    failure = ""
    if None in found and download is not None:
        try:
            download()
        except Exception as error:  # no network, server down, bad checksum: all end up here
            failure = f"; the download failed ({type(error).__name__}: {error})"
        found = [_find(folder, p) for p in patterns]
    if None in found:
        looked_for = ", ".join(str(folder / p) for p, f in zip(patterns, found, strict=True)
                               if f is None)
        raise DatasetNotFoundError(f"{name} not found: looked for {looked_for}{failure}; {hint}")
    return found


def _root_hint(layout: str, downloadable: bool) -> str:
    fetch = ", or download=True (--download)" if downloadable else ""
    return f"pass the folder that holds {layout} as data root (--data_root){fetch}"


# ------------------------------------------------------------------------- dataset readers


def _read_idx(path: Path) -> np.ndarray:
    """An array from an idx file (the MNIST format), gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    if data[:3] != b"\x00\x00\x08":  # zero, zero, uint8 element type
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    shape = np.frombuffer(data, ">i4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_reader(folder: str, classes: Sequence[str],
                 torchvision_class: type[torchvision.datasets.MNIST]) -> Reader:
    """Reader of an MNIST-format dataset in torchvision's layout, <root>/<folder>/raw/. The
    28x28 images are padded with background to 32x32, as LeCun et al. (1998) fed LeNet-5,
    since VGG downsamples by 32."""

    def read(root: Path, part: str, download: bool) -> ImageSet | None:
        if part == "val":
            return None
        prefix = "train" if part == "train" else "t10k"
        images_file, labels_file = _require(
            folder, root / folder / "raw",
            [f"{prefix}-images-idx3-ubyte(.gz)", f"{prefix}-labels-idx1-ubyte(.gz)"],
            _root_hint(f"{folder}/raw", downloadable=True),
            (lambda: torchvision_class(root, download=True)) if download else None)
        images = np.pad(_read_idx(images_file), ((0, 0), (2, 2), (2, 2)))
        return ImageSet(images, _read_idx(labels_file).astype(np.int64), tuple(classes))

    return read


def cifar_reader(title: str, folder: str, batches: dict[str, list[str]], meta: str,
                 names_key: bytes, labels_key: bytes,
                 torchvision_class: type[torchvision.datasets.CIFAR10]) -> Reader:
    """Reader of a CIFAR dataset in its python pickle format, <root>/<folder>/."""

    def read(root: Path, part: str, download: bool) -> ImageSet | None:
        if part == "val":
            return None
        files = _require(title, root / folder, [*batches[part], meta],
                         _root_hint(folder, downloadable=True),
                         (lambda: torchvision_class(root, download=True)) if download else None)
        loaded = [pickle.loads(path.read_bytes(), encoding="bytes") for path in files]
        *parts, names = loaded
        images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([p[labels_key] for p in parts]).astype(np.int64)
        classes = tuple(n.decode() for n in names[names_key])
        return ImageSet(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels, classes)

    return read


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


def _class_folders(folder: Path) -> ImageSet:
    """Image files in the class sub-folders of `folder`, classes sorted by folder name."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        names = sorted(e.name for e in os.scandir(folder / name)
                       if e.name.lower().endswith(IMAGE_EXTENSIONS))
        files += [str(folder / name / n) for n in names]
        labels += [label] * len(names)
    if not files:
        raise DatasetNotFoundError(f"no images in class sub-folders of {folder} (expected "
                                   f"{folder}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}})")
    return ImageSet(files, np.array(labels, dtype=np.int64), tuple(classes))


DEVKIT = "ILSVRC2012_devkit_t12"


def _devkit_file(folder: Path, member: str) -> bytes:
    """A file of the ILSVRC-2012 devkit, extracted or still in its .tar.gz."""
    if (folder / DEVKIT / member).is_file():
        return (folder / DEVKIT / member).read_bytes()
    with tarfile.open(folder / f"{DEVKIT}.tar.gz") as archive:
        return archive.extractfile(f"{DEVKIT}/{member}").read()


def _imagenet_val_from_devkit(folder: Path) -> ImageSet:
    """The official validation images as released, flat in val/, labelled by the devkit's
    ground truth (ILSVRC2012_IDs, mapped to wnids through meta.mat). Labels index the sorted
    wnids, the class order of the class folders and of torchvision's weights."""
    synsets = scipy.io.loadmat(io.BytesIO(_devkit_file(folder, "data/meta.mat")),
                               squeeze_me=True)["synsets"]
    wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
                  if int(s["num_children"]) == 0}  # the 1000 leaves; the rest are ancestors
    ground_truth = _devkit_file(folder, "data/ILSVRC2012_validation_ground_truth.txt").split()
    files = sorted(e.name for e in os.scandir(folder / "val")
                   if e.name.lower().endswith(IMAGE_EXTENSIONS))
    if len(files) != len(ground_truth):
        raise ValueError(f"{folder / 'val'} holds {len(files)} images but the devkit labels "
                         f"{len(ground_truth)}")
    classes = tuple(sorted(wnid_of_id.values()))
    label_of_wnid = {wnid: label for label, wnid in enumerate(classes)}
    labels = [label_of_wnid[wnid_of_id[int(i)]] for i in ground_truth]
    return ImageSet([str(folder / "val" / f) for f in files],
                    np.array(labels, dtype=np.int64), classes)


def read_imagenet(root: Path, part: str, download: bool) -> ImageSet | None:
    """ILSVRC-2012 in <root>/ImageNet/ (or <root> itself): train/<wnid>/*.JPEG, and val/
    either as val/<wnid>/*.JPEG (torchvision.datasets.ImageNet's layout, and the common one)
    or as released, flat val/*.JPEG with ILSVRC2012_devkit_t12(.tar.gz) beside it. The
    official val set is the "test" split; "val" is held out from train."""
    if part == "val":
        return None
    subfolder = "train" if part == "train" else "val"
    places = [root / "ImageNet", root]
    folder = next((f for f in places if (f / subfolder).is_dir()), None)
    if folder is None:
        raise DatasetNotFoundError(
            f"ImageNet not found: looked for {' and '.join(str(f / subfolder) for f in places)}"
            f"; expected {subfolder}/<wnid>/*.JPEG"
            + ("" if part == "train" else f" or flat val/*.JPEG with {DEVKIT}(.tar.gz)")
            + "; ImageNet cannot be downloaded automatically: get ILSVRC-2012 from "
              "https://image-net.org/ and " + _root_hint("ImageNet/", downloadable=False))
    if part == "test" and not any(e.is_dir() for e in os.scandir(folder / "val")):
        return _imagenet_val_from_devkit(folder)
    return _class_folders(folder / subfolder)


def image_folder_reader(subfolder: str = "") -> Reader:
    """Reader of images in class sub-folders under <root>/<subfolder>: either split into
    train/, val/ (optional: else held out from train) and test/, or, with no train/ there,
    the class sub-folders themselves as the training set (no test split)."""

    def read(root: Path, part: str, download: bool) -> ImageSet | None:
        folder = root / subfolder
        if not folder.is_dir():
            raise DatasetNotFoundError(f"image folder not found: looked for {folder}; "
                                       + _root_hint("the class sub-folders", False))
        if not (folder / "train").is_dir():
            if part == "test":
                raise DatasetNotFoundError(f"{folder} has no test/ folder: put train/ and "
                                           "test/ (and optionally val/) class folders there")
            return None if part == "val" else _class_folders(folder)
        if part == "val" and not (folder / "val").is_dir():
            return None
        return _class_folders(folder / part)

    return read


# ------------------------------------------------------------------------- statistics


def image_statistics(files: Sequence[str], max_images: int = 256, seed: int = 0
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel RGB (mean, std) of pixels scaled to [0, 1], over a seeded sample of up to
    `max_images` of `files` (enough for the statistics to settle to ~0.01)."""
    chosen = np.random.default_rng(seed).permutation(len(files))[:max_images]
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for i in chosen:
        image = cv2.imread(files[i], cv2.IMREAD_COLOR_RGB)
        if image is None:
            continue
        pixels = image.reshape(-1, 3) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels ** 2).sum(0)
        count += len(pixels)
    if count == 0:
        raise UnreadableImageError(f"none of the {len(chosen)} sampled images could be read")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))  # cancellation can dip < 0
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


@lru_cache(maxsize=8)
def image_folder_spec(root: Path) -> DatasetSpec:
    """Spec of the class folders at `root`, measured from its training images."""
    train = image_folder_reader()(root, "train", False)
    mean, std = image_statistics(train.images)
    return DatasetSpec("ImageFolder", len(train.classes), 3, 224, mean, std, hflip=True,
                       train_scale=(256, 256))


# ---------------------------------------------------------------------- datasets and splits


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into sorted (kept, held_out) indices, round(fraction * n)
    held out; the same for the same (n, fraction, seed) on every machine (numpy's PCG64)."""
    order = np.random.default_rng(seed).permutation(n)
    held = round(fraction * n)
    return np.sort(order[held:]), np.sort(order[:held])


class ArrayDataset(Dataset):
    """Labelled images held in memory as one uint8 array (the small datasets)."""

    def __init__(self, images: ImageSet, transform: Callable[[np.ndarray], torch.Tensor]):
        self.images, self.labels, self.classes = images.images, images.labels, images.classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class ImageFileDataset(Dataset):
    """Labelled image files, decoded on access (never up front: ImageNet has 1.28M).

    A file that cannot be decoded raises UnreadableImageError with on_corrupt="error". With
    "skip" the next readable image takes its place, so batches keep their size and distributed
    ranks their batch count, and the file is marked in `unreadable`, a shared-memory flag per
    file that every loader worker writes to; build_loader warns about them once per epoch.
    """

    def __init__(self, images: ImageSet, transform: Callable[[np.ndarray], torch.Tensor],
                 on_corrupt: str = "skip"):
        self.files, self.labels, self.classes = images.images, images.labels, images.classes
        self.transform, self.on_corrupt = transform, on_corrupt
        self.unreadable = torch.zeros(len(self.files), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # IndexError past the end, as iteration expects
        for offset in range(len(self)):  # the next readable image stands in for a bad one
            i = (index + offset) % len(self)
            if self.unreadable[i]:
                continue
            image = cv2.imread(self.files[i], cv2.IMREAD_COLOR_RGB)
            if image is not None:
                return self.transform(image), int(self.labels[i])
            if self.on_corrupt == "error":
                raise UnreadableImageError(f"cannot decode {self.files[i]} (pass "
                                           "on_corrupt='skip' to skip unreadable images)")
            self.unreadable[i] = True
        raise UnreadableImageError(f"none of the {len(self)} images could be decoded")

    def unreadable_files(self) -> list[str]:
        return [self.files[i] for i in torch.nonzero(self.unreadable).flatten().tolist()]


def build_dataset(name: str, split: str, root: str | os.PathLike,
                  transform: Callable[[np.ndarray], torch.Tensor], *,
                  val_fraction: float = 0.1, seed: int = 0, download: bool = False,
                  on_corrupt: str = "skip") -> ArrayDataset | ImageFileDataset:
    """Split "train", "val" or "test" of a registered dataset under `root`, items
    (transform(image), label). Without an official validation split, "val" is the seeded
    `val_fraction` of the training set and "train" the rest (disjoint, fixed by `seed`;
    train.py and evaluate.py keep the default, so a run's --seed never moves the split).
    Unreadable image files are skipped and counted (on_corrupt="skip") or raise ("error")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    read, root = _registered(name).read, Path(root)
    official_val = None if split == "test" else read(root, "val", download)
    if split == "test":
        images = read(root, "test", download)
    elif official_val is not None:
        images = official_val if split == "val" else read(root, "train", download)
    else:
        train = read(root, "train", download)
        kept, held_out = holdout(len(train), val_fraction, seed)
        images = train.subset(held_out if split == "val" else kept)
    if isinstance(images.images, np.ndarray):
        return ArrayDataset(images, transform)
    return ImageFileDataset(images, transform, on_corrupt)


# ------------------------------------------------------------------------------ transforms


def train_transform(spec: DatasetSpec, image_size: int, scale: tuple[int, int] | None = None,
                    color_shift: bool = True) -> TrainTransform:
    """The paper's training augmentation for `spec`'s images at `image_size`: rescale to S
    drawn from `scale` = (Smin, Smax) (None: spec.train_scale, proportionally resized when
    image_size differs from spec.image_size), random crop (pad-and-crop for datasets stored at
    their training size), horizontal flip where spec.hflip, colour shift for RGB datasets."""
    ratio = image_size / spec.image_size
    scale = scale or spec.train_scale_at(image_size)
    return TrainTransform(image_size, scale, spec.mean, spec.std, hflip=spec.hflip,
                          padding=round(spec.crop_padding * ratio),
                          color_shift=color_shift and spec.in_channels == 3)


def eval_transform(spec: DatasetSpec, image_size: int, scale: int | None = None,
                   crop: bool = True, *, antialias: bool = False) -> EvalTransform:
    """Test-time transform: rescale to Q = `scale`, then the centre image_size crop, or with
    crop=False the whole rescaled image (dense evaluation). Q defaults to the paper's single
    test scale for the default training scale, 0.5 (Smin + Smax) (= S when fixed), resized
    with image_size: 256 for ImageNet at 224, image_size for the small datasets.
    `antialias` resizes as torchvision's PIL pipeline does (PIL's antialiased bilinear), for
    torchvision's weights; the default matches this toolkit's training resampling."""
    if scale is None:
        scale = single_test_scale(spec.train_scale_at(image_size))
    return EvalTransform(scale, image_size if crop else None, spec.mean, spec.std,
                         antialias=antialias)


# ------------------------------------------------------------------------------- loaders


class EpochLoader(DataLoader):
    """A DataLoader that warns once at the end of each pass if its dataset skipped files."""

    epochs_done = 0

    def __iter__(self) -> Iterator:
        yield from super().__iter__()
        self.epochs_done += 1
        dataset = self.dataset
        while not hasattr(dataset, "unreadable_files") and hasattr(dataset, "dataset"):
            dataset = dataset.dataset  # through Subset and other wrappers
        skipped = getattr(dataset, "unreadable_files", list)()
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            warnings.warn(f"epoch {self.epochs_done}: skipped {len(skipped)} unreadable image "
                          f"file(s), each replaced by the next readable image: {shown}",
                          stacklevel=2)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0,
                 seed: int = 0, distributed: bool = False, drop_last: bool | None = None,
                 sampler: Sampler | None = None) -> EpochLoader:
    """Batches of `dataset`: shuffled by a `seed`ed generator when `train` (which also seeds
    the workers' augmentation draws), in order otherwise. `distributed` shards it: for
    training with a DistributedSampler (call loader.sampler.set_epoch(epoch) every epoch),
    for evaluation unpadded, so every sample counts exactly once. A given `sampler`
    (train.py's resumable one) replaces all of that. drop_last defaults to `train`:
    evaluation must see every image."""
    if sampler is None and distributed:
        sampler = (DistributedSampler(dataset, shuffle=True, seed=seed) if train
                   else ShardSampler(dataset))
    return EpochLoader(
        dataset, batch_size, shuffle=train and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0, drop_last=train if drop_last is None else drop_last,
        generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- registry

register("Mnist", DatasetSpec("Mnist", 10, 1, 32, (0.1307,), (0.3081,), hflip=False,
                              train_scale=(32, 32), crop_padding=4),
         mnist_reader("MNIST", [str(d) for d in range(10)], torchvision.datasets.MNIST))
register("FashionMnist",
         DatasetSpec("FashionMnist", 10, 1, 32, (0.2860,), (0.3530,), hflip=True,
                     train_scale=(32, 32), crop_padding=4),
         mnist_reader("FashionMNIST", torchvision.datasets.FashionMNIST.classes,
                      torchvision.datasets.FashionMNIST))
register("Cifar10",
         DatasetSpec("Cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                     hflip=True, train_scale=(32, 32), crop_padding=4),
         cifar_reader("CIFAR-10", "cifar-10-batches-py",
                      {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                      "batches.meta", b"label_names", b"labels", torchvision.datasets.CIFAR10))
register("Cifar100",
         DatasetSpec("Cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                     hflip=True, train_scale=(32, 32), crop_padding=4),
         cifar_reader("CIFAR-100", "cifar-100-python", {"train": ["train"], "test": ["test"]},
                      "meta", b"fine_label_names", b"fine_labels", torchvision.datasets.CIFAR100),
         aliases=["Cifar"])
register("Digits", DatasetSpec("Digits", 10, 1, 32, (0.3050,), (0.3757,), hflip=False,
                               train_scale=(32, 32), crop_padding=4),
         read_digits)
register("ImageNet",
         DatasetSpec("ImageNet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD,
                     hflip=True, train_scale=(256, 256)),
         read_imagenet)
register("ImageFolder", image_folder_spec, image_folder_reader())
