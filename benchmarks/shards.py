"""Shard sets (python -m vgg.data.shards) against the image files they hold: the writer's
throughput beside a plain tar of the same files (tarfile, no decoding check), and training
loading from the shards beside loading from the files, in images per second and per
loading process, through the same decode + augment path (train_data's training loader, one
epoch), in this process (workers 0) and with loader worker processes. The tree is hard
links to 16 small JPEGs in class folders (benchmarks/data_setup.py), in a temporary
folder: the file system's caches are warm for both.

    python -m benchmarks.shards                       # 4000 files, 100 class folders
    python -m benchmarks.shards --files 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.data_setup import prepare
from config import Config
from vgg.data.shards import write_shard_set
from vgg.train_data import build_data


def tar_seconds(folder: Path, out: Path) -> float:
    """The reference: the same files into one plain tar, no decoding, no index."""
    start = time.perf_counter()
    with tarfile.open(out, "w") as tar:
        tar.add(folder, arcname=".")
    return time.perf_counter() - start


def writer_seconds(src: Path, dst: Path, workers: int) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    write_shard_set(src, dst, workers=workers)
    return time.perf_counter() - start


def epoch_seconds(root: Path, workers: int) -> tuple[float, int]:
    """Seconds for one epoch of the training loader (built beforehand, not timed) and the
    number of images it loaded."""
    data = build_data(Config(dataset="ImageFolder", data_root=str(root), image_size=32,
                             batch_size=64, workers=workers), 0, 1)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in data.train_loader)
    return time.perf_counter() - start, count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="loader/writer processes")
    parser.add_argument("--rounds", type=int, default=1, help="each measured this many times")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prepare(folder, args.files, args.classes)
        src, dst = root, root / "shards"  # data_root of the files, of the shards
        rows = []
        for workers in (1, args.workers):
            seconds = statistics.median(writer_seconds(src, dst, workers)
                                        for _ in range(args.rounds))
            rows.append((f"shard writer, {workers} process(es)", args.files / seconds,
                         args.files / seconds / workers))
        reference = statistics.median(tar_seconds(root / "train", root / "plain.tar")
                                      for _ in range(args.rounds))
        (root / "plain.tar").unlink()
        rows.append(("reference: tarfile of the same files (no check, no index)",
                     args.files / reference, args.files / reference))
        # Files and shards alternate within each round, so that a change in the machine's
        # load between rounds falls on both.
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for workers in (0, args.workers):
                for kind, data_root in (("files", src), ("shards", dst)):
                    seconds, count = epoch_seconds(data_root, workers)
                    rates.setdefault((kind, workers), []).append(count / seconds)
        loading = {key: statistics.median(values) for key, values in rates.items()}
        for (kind, workers), rate in loading.items():
            rows.append((f"loading {kind}, workers {workers}", rate, rate / max(workers, 1)))
    print(f"{args.files} JPEGs (48x64, hard links to 16) in {args.classes} class folders, "
          f"median of {args.rounds} round(s), {os.cpu_count()} CPU(s)")
    print("| | img/s | img/s per process |\n|---|---|---|")
    for title, rate, per_process in rows:
        print(f"| {title} | {rate:.0f} | {per_process:.0f} |")
    for workers in (0, args.workers):
        print(f"shards / files, workers {workers}: "
              f"{loading['shards', workers] / loading['files', workers]:.2f}x")


if __name__ == "__main__":
    main()
