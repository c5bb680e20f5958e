"""A small real-photo ImageFolder (train/ val/ test/ of a few classes, JPEG files) cut from
the CIFAR-10 images that a training run held out as its validation split: photos that run
never trained on, in the layout a student's own photos have. The README's fine-tuning
figures (pretrained against from scratch) were measured on it.

    python -m benchmarks.photo_folder --data_root data --out data/catdog --classes cat dog

The images are the run's seeded held-out 10% (``--dataset Cifar10``, ``val_fraction`` unset,
``--seed 0``: pass the run's seed); each class's first ``--per_class`` images, in held-out
order, go to train/, val/ and test/. Written as JPEG (quality 95), at their own 32x32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from vgg.data.splits import split_images
from vgg.errors import UserError, run_cli

SPLIT_NAMES = ("train", "val", "test")


def write_folder(data_root: str, out: Path, classes: list[str], per_class: list[int],
                 seed: int = 0) -> dict[str, int]:
    """Write the folder; return the images written per split."""
    held_out = split_images("Cifar10", "val", data_root, seed=seed)
    unknown = sorted(set(classes) - set(held_out.classes))
    if unknown:
        raise UserError(f"--classes {' '.join(unknown)}: CIFAR-10 has "
                        f"{', '.join(held_out.classes)}")
    written = dict.fromkeys(SPLIT_NAMES, 0)
    for name in classes:
        indices = np.flatnonzero(held_out.labels == held_out.classes.index(name))
        if len(indices) < sum(per_class):
            raise UserError(f"the held-out split has {len(indices)} {name} images, fewer "
                            f"than --per_class {' '.join(map(str, per_class))} asks for")
        starts = np.cumsum([0, *per_class])
        for split, start, end in zip(SPLIT_NAMES, starts[:-1], starts[1:], strict=True):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices[start:end]:
                bgr = cv2.cvtColor(held_out.images[i], cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(folder / f"{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
                written[split] += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_folder",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True,
                        help="holds cifar-10-batches-py/ (make_pickles.py writes it)")
    parser.add_argument("--out", type=Path, required=True, help="the ImageFolder to write")
    parser.add_argument("--classes", nargs="+", default=["cat", "dog"])
    parser.add_argument("--per_class", type=int, nargs=3, default=[120, 40, 100],
                        metavar=("TRAIN", "VAL", "TEST"), help="images per class and split")
    parser.add_argument("--seed", type=int, default=0, help="the training run's --seed")
    args = parser.parse_args(argv)
    written = write_folder(args.data_root, args.out, args.classes, args.per_class, args.seed)
    print(f"{args.out}: " + ", ".join(f"{n} {split}" for split, n in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.photo_folder"))
