"""Start-up cost of an image-folder data set, ours (vgg/data/listing.py's file index) beside
torchvision.datasets.ImageFolder on the same tree: seconds from nothing to the dataset built
and its sample 0 decoded, the main process's RSS growth for it, and the private memory a
forked loader worker gains by reading every sample's path and label once (as an epoch
does; images are not decoded). Ours is measured on a first start (no index: the tree is
listed and the index written) and on a restart (the index read); torchvision lists at every
start. Each measurement runs in a fresh process; the tree is hard links to 16 tiny JPEGs in
class folders (benchmarks/data_setup.py), and the file system's own caches are warm in
every run (dropping them needs privileges).

    python -m benchmarks.index_startup                    # 20k files, 1000 class folders
    python -m benchmarks.index_startup --files 1281167    # ImageNet's training set
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data_setup import prepare
from vgg.data.listing import SETTLED_SECONDS, index_files

KINDS = ("torchvision", "ours, first start", "ours, restart")


def memory_kib(field: str, source: str = "/proc/self/status") -> int:
    """A memory figure of this process in KiB, as Linux reports it (VmRSS, or from
    smaps_rollup: Private_Clean, Private_Dirty)."""
    for line in Path(source).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{source} has no {field}")


def private_kib(process: str = "self") -> int:
    """Memory a process (this one, or the pid given) does not share with its parent (pages
    it wrote since fork)."""
    rollup = f"/proc/{process}/smaps_rollup"
    return memory_kib("Private_Clean", rollup) + memory_kib("Private_Dirty", rollup)


def build(kind: str, folder: str):
    """The dataset of ``folder``'s class folders, and a function reading sample i's path and
    label (what a worker touches per sample before decoding)."""
    if kind == "torchvision":
        import torchvision

        dataset = torchvision.datasets.ImageFolder(folder)
        return dataset, lambda i: (*dataset.samples[i],)  # what __getitem__ unpacks
    from vgg.data import ImageFileDataset, image_folder_reader

    images = image_folder_reader()(Path(folder).parent, Path(folder).name, False)
    dataset = ImageFileDataset(images, lambda image: image)
    return dataset, lambda i: (dataset.files[i], dataset.labels[i])


def measure(kind: str, folder: str) -> dict:
    """In this (fresh) process: seconds and RSS growth to the dataset and its sample 0, then
    a forked worker's private memory growth over one pass of the paths and labels."""
    import torch  # noqa: F401  (imported before the baseline, as train.py has it)
    import torchvision  # noqa: F401

    import vgg.data  # noqa: F401

    rss = memory_kib("VmRSS")
    start = time.perf_counter()
    dataset, sample_path = build(kind, folder)
    dataset[0]
    seconds = time.perf_counter() - start
    grown = memory_kib("VmRSS") - rss
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: holds the dataset as a DataLoader worker does, by fork
        before = private_kib()
        for i in range(len(dataset)):
            sample_path(i)
        os.write(write, str(private_kib() - before).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    worker = int(os.read(read, 64))
    from vgg.data.listing import folders_listed

    return {"seconds": seconds, "main_mib": grown / 1024, "worker_mib": worker / 1024,
            "samples": len(dataset), "listed": folders_listed()}


def run(kind: str, folder: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "benchmarks.index_startup", "--measure",
                             kind, folder], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.stdout.splitlines()[-1])


ROWS = [("seconds to the dataset and its sample 0", "seconds", "{:.2f} s"),
        ("main process RSS growth", "main_mib", "{:.1f} MiB"),
        ("forked worker's private growth after reading every path", "worker_mib", "{:.1f} MiB")]


def table(results: dict[str, list[dict]], rows: list[tuple[str, str, str]] = ROWS,
          kinds: tuple[str, ...] = KINDS) -> str:
    """Medians over the rounds of each row's (title, key, format), and the first kind's
    (the reference's) figure over each of the others'."""
    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    reference = kinds[0]
    lines = ["| | " + " | ".join(kinds) + " | "
             + " | ".join(f"{reference} / {kind.removeprefix('ours, ')}" for kind in kinds[1:])
             + " |", "|---" * (2 * len(kinds)) + "|"]
    for title, key, form in rows:
        figures = [form.format(median(kind, key)) for kind in kinds]
        ratios = [median(reference, key) / max(median(kind, key), 1e-9) for kind in kinds[1:]]
        lines.append(f"| {title} | " + " | ".join(figures) + " | "
                     + " | ".join(f"{r:.1f}x" for r in ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="each measured this many times")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "FOLDER"),
                        help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        prepare(root, args.files, args.classes)
        time.sleep(SETTLED_SECONDS)  # a tree written just now is listed, but not indexed
        folder = os.path.join(root, "train")
        print(f"{args.files} files in {args.classes} class folders (hard links) written in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        results: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for _ in range(args.rounds):
            results["torchvision"].append(run("torchvision", folder))
            for index in index_files(Path(folder), "classes"):
                index.unlink(missing_ok=True)
            results["ours, first start"].append(run("ours", folder))
            results["ours, restart"].append(run("ours", folder))
        if len({r["samples"] for rs in results.values() for r in rs}) != 1:
            raise RuntimeError(f"the datasets differ in size: {results}")
        if any(r["listed"] for r in results["ours, restart"]):
            raise RuntimeError("a restart listed the tree again: the index was not used")
    print(f"{args.files} files, median of {args.rounds} round(s), torch "
          f"{__import__('torch').__version__}, {os.cpu_count()} CPU(s)")
    print(table(results))


if __name__ == "__main__":
    main()
