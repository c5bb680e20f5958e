"""Seconds to save a VGG-16 training checkpoint (weights + SGD momentum, 1.03 GiB) four
ways, alternated round by round, to find where the atomic save's extra time goes:

    python -m benchmarks.checkpoint_save [--rounds 3] [--dir /tmp]

- ``torch.save(path)``: torch's zip writer on a file it opens itself (C++ writes);
- the same + ``fsync``: the data on disk;
- ``torch.save(file object)`` + flush + fsync: the writer on a Python file object, as
  vgg.atomic.replace_atomically hands one to vgg.checkpoint.save_checkpoint;
- ``save_checkpoint``: that, plus the rename over the old file and the directory's fsync.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vgg.checkpoint import save_checkpoint
from vgg.model import build_vgg


def training_state(version: str, image_size: int) -> dict:
    """What train.py saves for this network with 1000 classes: the weights and one
    momentum buffer per parameter (the rest is a few KB)."""
    model = build_vgg(version, num_classes=1000, image_size=image_size, init="kaiming")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(1, 3, image_size, image_size)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_to_file_object(state: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


WAYS = {
    "torch.save(path)": lambda state, path: torch.save(state, path),
    "torch.save(path) + fsync": lambda state, path: (torch.save(state, path), fsync(path)),
    "torch.save(file object) + fsync": save_to_file_object,
    "save_checkpoint (atomic)": save_checkpoint,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where to write (default: the temp dir)")
    parser.add_argument("--model_version", default="D")
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)
    state = training_state(args.model_version, args.image_size)
    gib = sum(t.numel() * t.element_size() for t in state["model"].values()) * 2 / 2**30
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "last.pt"
        for _ in range(args.rounds):
            for way, save in WAYS.items():
                path.unlink(missing_ok=True)
                os.sync()  # no earlier write still being flushed
                start = time.perf_counter()
                save(state, path)
                seconds[way].append(time.perf_counter() - start)
    print(f"config {args.model_version} at {args.image_size}: a checkpoint of {gib:.2f} GiB "
          f"of tensors, {args.rounds} alternated rounds, written to "
          f"{args.dir or tempfile.gettempdir()}")
    for way, values in seconds.items():
        print(f"  {way:34s} median {statistics.median(values):6.2f} s   "
              f"range {min(values):.2f}-{max(values):.2f} s")


if __name__ == "__main__":
    main()
