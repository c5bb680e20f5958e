"""Images/s per CPU core of the ImageNet training transform (JPEG decode, scale-jittered
rescale, random crop, flip, PCA colour shift, normalise): this project's OpenCV pipeline
against the torchvision.transforms.v2 and albumentations equivalents, on the same generated
JPEGs.

    python -m benchmarks.data_pipeline [--images 64] [--scale 256 512] [--repeats 3]

Both run in this one process with one thread (OpenCV's and torch's pools off), so the figures
are per core; a loader with N workers scales them by about N. Two torchvision baselines are
timed: PIL decoding (what ImageFolder does) and torchvision.io.decode_jpeg; albumentations
gets the same OpenCV decode as ours. "ours" is what a loader worker of train.py runs: each
sample drawn under its own seed (vgg.data.sampling.SeededSamples). The contenders take
turns pass by pass; each figure is the median of its passes.

``seeded_rate`` (benchmarks.before_after's "seeding" probe) times those per-sample-seeded
samples through a loader worker, as the trainer builds it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from benchmarks.images import write_jpegs
from vgg.data import ArrayDataset, ImageFileDataset, ImageSet, build_loader, dataset_spec
from vgg.data.sampling import ResumableSampler, SeededSamples
from vgg.transforms import COLOR_SHIFT_STD, IMAGENET_EIGVAL, IMAGENET_EIGVEC, train_transform

# albumentations is optional (a GPU machine may lack it): its rows are left out without it.
HAVE_ALBUMENTATIONS = importlib.util.find_spec("albumentations") is not None


class Lighting(torch.nn.Module):
    """AlexNet's PCA colour shift on a float image in [0, 1] (torchvision has none built in)."""

    def __init__(self):
        super().__init__()
        self.eigval = torch.tensor(IMAGENET_EIGVAL, dtype=torch.float32)
        self.eigvec = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float32)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * COLOR_SHIFT_STD
        return image + (self.eigvec @ (alpha * self.eigval))[:, None, None]


def torchvision_transform(scale: tuple[int, int], size: int) -> v2.Compose:
    spec = dataset_spec("ImageNet")
    return v2.Compose([
        v2.ToImage(),
        v2.RandomShortestSize(min_size=list(range(scale[0], scale[1] + 1))),
        v2.RandomCrop(size),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        Lighting(),
        v2.Normalize(spec.mean, spec.std),
    ])


def albumentations_transform(scale: tuple[int, int], size: int):
    """The same augmentation as an albumentations pipeline, as its users would write it:
    rescale the whole image, then crop (ours resamples only the crop's pixels)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import-time PyPI check
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    spec = dataset_spec("ImageNet")
    eigval = np.asarray(IMAGENET_EIGVAL, dtype=np.float32)
    eigvec = np.asarray(IMAGENET_EIGVEC, dtype=np.float32)

    def lighting(image: np.ndarray, **_) -> np.ndarray:
        alpha = np.random.normal(0.0, COLOR_SHIFT_STD, 3).astype(np.float32)
        return image + eigvec @ (alpha * eigval)

    return A.Compose([
        A.SmallestMaxSize(max_size=list(range(scale[0], scale[1] + 1))),
        A.RandomCrop(size, size),
        A.HorizontalFlip(),
        A.ToFloat(max_value=255.0),
        A.Lambda(image=lighting),
        A.Normalize(spec.mean, spec.std, max_pixel_value=1.0),
        ToTensorV2(),
    ])


def seeded_samples(folder: str, size: int) -> SeededSamples:
    """The trainer's training samples (train.py's --data_pipeline workers: each sample's
    augmentation seeded by its position): at 32 px a CIFAR-like in-memory dataset (pad,
    crop, flip), at 224 ImageNet's transform on the JPEGs ``prepare`` wrote."""
    if size == 32:
        images = np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
        dataset = ArrayDataset(ImageSet(images, np.zeros(len(images), dtype=np.int64), ("a",)),
                               train_transform(dataset_spec("Cifar10"), 32))
    else:
        files = sorted(str(f) for f in Path(folder).glob("*.JPEG"))
        dataset = ImageFileDataset(ImageSet(files, np.zeros(len(files), dtype=np.int64),
                                            ("all",)),
                                   train_transform(dataset_spec("ImageNet"), size))
    return SeededSamples(dataset)


def prepare(folder: str, images: int = 2048, size: int = 32) -> None:
    """The JPEGs of ``seeded_rate`` at 224 (none needed at 32)."""
    if size != 32:
        write_jpegs(Path(folder), min(images, 256))


def seeded_rate(folder: str, images: int = 2048, size: int = 32) -> float:
    """Images/s of the trainer's per-sample-seeded training samples through a loader with
    one worker process, as train.py builds it (ResumableSampler's (index, seed) pairs,
    build_loader), over ``images`` samples after a warm-up batch: one core's rate."""
    samples = seeded_samples(folder, size)
    sampler = ResumableSampler(len(samples), seed=0, rank=0, world=1, with_seeds=True)
    loader = build_loader(samples, 32, train=True, workers=1, drop_last=False,
                          sampler=sampler)
    batches, count = iter(loader), 0
    next(batches)  # the worker's start
    start = time.perf_counter()
    while count < images:
        for _, labels in batches:
            count += len(labels)
            if count >= images:
                break
        else:
            batches = iter(loader)
    return count / (time.perf_counter() - start)


def images_per_second(loads: dict[str, Callable[[int], torch.Tensor]], count: int,
                      repeats: int) -> dict[str, float]:
    """Per contender, the median images/s over `repeats` passes over all `count` images,
    after one warm-up pass; the contenders take turns pass by pass, so a load that changes
    during the run (a shared machine) weighs on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in loads}
    for repeat in range(repeats + 1):
        for name, load in loads.items():
            start = time.perf_counter()
            for i in range(count):
                load(i)
            if repeat:
                rates[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


@contextmanager
def one_core() -> Iterator[None]:
    """torch and OpenCV on one thread (figures are per core), restored afterwards: main() is
    also called in-process (the smoke test), where a changed thread count would change the
    float summation order of every later computation in that process."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--scale", type=int, nargs=2, default=(256, 512), metavar=("SMIN", "SMAX"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    scale = tuple(args.scale)

    with one_core():
        with tempfile.TemporaryDirectory() as folder:
            files = write_jpegs(Path(folder), args.images)
            ours = ImageFileDataset(
                ImageSet(files, np.zeros(len(files), dtype=np.int64), ("all",)),
                train_transform(dataset_spec("ImageNet"), args.size, scale))
            trainers = SeededSamples(ours)  # what a loader worker of train.py runs
            reference = torchvision_transform(scale, args.size)
            decoded = [cv2.imread(f, cv2.IMREAD_COLOR_RGB) for f in files]
            contenders = {  # name: (load image i, name of ours to compare with)
                "ours (OpenCV)": (lambda i: trainers[(i, i)][0], None),
                "torchvision v2, PIL decode": (
                    lambda i: reference(Image.open(files[i]).convert("RGB")), "ours (OpenCV)"),
                "torchvision v2, decode_jpeg": (
                    lambda i: reference(torchvision.io.decode_jpeg(torchvision.io.read_file(
                        files[i]))), "ours (OpenCV)"),
                "ours, transform only": (lambda i: ours.transform(decoded[i]), None),
                "torchvision, transform only": (
                    lambda i: reference(torch.from_numpy(decoded[i]).permute(2, 0, 1)),
                    "ours, transform only"),
            }
            if HAVE_ALBUMENTATIONS:
                albumentations = albumentations_transform(scale, args.size)
                contenders["albumentations, OpenCV decode"] = (
                    lambda i: albumentations(image=cv2.imread(files[i], cv2.IMREAD_COLOR_RGB))[
                        "image"], "ours (OpenCV)")
                contenders["albumentations, transform only"] = (
                    lambda i: albumentations(image=decoded[i])["image"], "ours, transform only")
            rates = images_per_second({name: load for name, (load, _) in contenders.items()},
                                      len(files), args.repeats)

    print(f"ImageNet training transform, S in [{scale[0]}, {scale[1]}], {args.size}px crops, "
          f"{args.images} JPEGs of ~500x375, one core (torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, OpenCV {cv2.__version__}"
          f"{'' if HAVE_ALBUMENTATIONS else '; albumentations not installed'})")
    for name, (_, ours_name) in contenders.items():
        ratio = f"ours / this = {rates[ours_name] / rates[name]:4.2f}x" if ours_name else ""
        print(f"  {name:30s} {rates[name]:8.1f} images/s/core   {ratio}")


if __name__ == "__main__":
    main()
