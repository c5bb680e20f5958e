"""Seconds from a run's configuration to its loaders on an ImageFolder of many files: what
train.py spends before its first step listing train/ (once per process since issue 26;
three times before), measuring the statistics on a sample, holding out the validation
split. The tree is hard links to a few tiny JPEGs, so the listing dominates.

    python -m benchmarks.data_setup --files 200000     # this checkout alone
    python -m benchmarks.before_after --before /tmp/before listing --files 200000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.images import write_jpegs
from config import Config
from vgg.train_data import build_data


def prepare(folder: str, files: int = 100_000, classes: int = 1000, val: int = 0) -> None:
    """<folder>/train/<class>/<i>.JPEG: ``files`` hard links to 16 tiny JPEGs (more where
    ext4's 65,000 links per file would not do: ImageNet's 1.28M), in ``classes`` class
    folders; and ``val`` more in <folder>/val/<class>/ (ImageNet's 50,000, sorted into
    class folders as torchvision.datasets.ImageNet has them)."""
    sources = write_jpegs(Path(folder), max(16, -(-(files + val) // 60_000)), shapes=[(48, 64)])
    first = 0  # the links cycle through the sources across both splits
    for split, count in (("train", files), ("val", val)):
        for label in range(classes if count else 0):
            (Path(folder) / split / f"n{label:08d}").mkdir(parents=True)
        for i in range(count):
            os.link(sources[(first + i) % len(sources)],
                    Path(folder) / split / f"n{i % classes:08d}" / f"{i}.JPEG")
        first += count


def setup_seconds(folder: str, files: int = 100_000, classes: int = 1000) -> float:
    """Seconds of vgg.train_data.build_data for a run on the tree ``prepare`` wrote (the
    default 10% held out for validation), as train.py calls it."""
    start = time.perf_counter()
    build_data(Config(dataset="ImageFolder", data_root=folder, image_size=32, workers=0),
               0, 1)
    return time.perf_counter() - start


def fingerprint_seconds(folder: str, files: int = 100_000, classes: int = 1000) -> float:
    """Seconds of vgg.provenance.dataset_fingerprint of the train and validation splits
    build_data makes of the tree ``prepare`` wrote, as train.py calls it at every start."""
    from vgg.provenance import dataset_fingerprint

    data = build_data(Config(dataset="ImageFolder", data_root=folder, image_size=32,
                             workers=0), 0, 1)
    start = time.perf_counter()
    dataset_fingerprint("ImageFolder", {"train": data.train_set, "val": data.val_set}, folder)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        prepare(folder, args.files, args.classes)
        seconds = setup_seconds(folder, args.files, args.classes)
    print(f"{args.files} files in {args.classes} class folders: data set up in {seconds:.2f} s")


if __name__ == "__main__":
    main()
