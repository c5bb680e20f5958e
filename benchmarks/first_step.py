"""Seconds from launching train.py on an ImageNet-layout tree to its first training step,
and the peak memory of its main process and of each loader worker: on a first start (no
file index: train/ and val/ are listed and indexed) and on a restart (``--resume auto`` of
that run: the indexes read, the checkpoint loaded, the next step taken), beside
torchvision's reference recipe (``torchvision.datasets.ImageFolder`` on train/ and val/, a
DataLoader, the same network, one SGD step), which lists the tree at every start.

    python -m benchmarks.first_step                                 # 20k + 1k files
    python -m benchmarks.first_step --files 1281167 --val 50000     # ImageNet's sizes
    python -m benchmarks.first_step --tree DIR    # a tree data_setup.prepare wrote before

The tree is hard links to a few tiny JPEGs (benchmarks/data_setup.py), so listing, not
decoding, dominates; the network is VGG-A at 1/16 width on 32 px crops, a step of well
under a second on a CPU, so that the figures are start-up. Each run is a fresh process.
The time of the first step is the ``time`` of its row in the run's metrics.jsonl (train.py
logs every step here: ``--log_interval 1``), less the time of the launch. Memory is polled
every POLL_S from /proc: VmHWM (the kernel's peak RSS) of the main process and of each
loader worker (a child torch named pt_data_worker), and each worker's
private memory (Private_Clean + Private_Dirty of smaps_rollup, the pages it does not share
with the main process: what it holds of its own, the index included); a worker's RSS also
counts the pages it shares with the main process. The runs end after that step
(``--max_steps``), with a checkpoint of the tiny network. Also printed: the CPU seconds of
each whole run, main process and workers (wait4's rusage), which a loaded machine does
not stretch as it stretches the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data_setup import prepare
from benchmarks.index_startup import memory_kib, private_kib, table
from vgg.data.listing import SETTLED_SECONDS, index_files

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("torchvision", "ours, first start", "ours, restart")
POLL_S = 0.02
WORKER_NAME = "pt_data_worker"  # what torch's DataLoader workers call themselves
# VGG-A at 1/16 width with 16-wide FC layers on 32 px: a cheap step on a CPU.
NETWORK = {"version": "A", "width": 0.0625, "fc_width": 16, "image_size": 32}
ROWS = [("seconds from launch to the first training step", "seconds", "{:.1f} s"),
        ("CPU seconds of the run (main and workers)", "cpu_s", "{:.1f} s"),
        ("main process peak RSS", "main_mib", "{:.0f} MiB"),
        ("loader worker peak RSS (largest worker)", "worker_mib", "{:.0f} MiB"),
        ("loader worker private memory (largest worker, polled peak)", "worker_private_mib",
         "{:.1f} MiB")]


def train_command(root: str, out: str, step: int, workers: int, batch: int) -> list[str]:
    """train.py on ``root`` up to optimizer step ``step``, resuming out/first_step if there."""
    return [sys.executable, "train.py", "--dataset", "ImageNet", "--data_root", root,
            "--model_version", NETWORK["version"], "--width", str(NETWORK["width"]),
            "--fc_width", str(NETWORK["fc_width"]), "--image_size", str(NETWORK["image_size"]),
            "--batch_size", str(batch), "--workers", str(workers), "--device", "cpu",
            "--log_interval", "1", "--max_steps", str(step), "--resume", "auto",
            "--out_dir", out, "--run_name", "first_step", "--wandb", "disabled",
            "--progress", "false"]


def reference(root: str, run_dir: str, workers: int, batch: int) -> None:
    """torchvision's classification reference's data path (ImageFolder on train/ and val/,
    RandomResizedCrop, a shuffling DataLoader) and one SGD step of the same network; its
    step's row written as train.py writes it."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torchvision import transforms

    from vgg.model import build_vgg
    from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD

    size = NETWORK["image_size"]
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize]))
    val = torchvision.datasets.ImageFolder(os.path.join(root, "val"), transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), normalize]))
    print(f"torchvision's recipe ({len(train)} train / {len(val)} val images)", flush=True)
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True,
                                         num_workers=workers)
    model = build_vgg(NETWORK["version"], num_classes=len(train.classes),
                      image_size=size, fc_width=NETWORK["fc_width"], width=NETWORK["width"])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    batches = iter(loader)  # its workers live until the row is written
    images, labels = next(batches)
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"kind": "train", "step": 1, "loss": loss.item(),
                            "time": time.time()}) + "\n")


def loader_workers(main: int) -> list[int]:
    """The pids of ``main``'s DataLoader workers: its children that torch named
    pt_data_worker (not a git it runs, which between fork and exec looks like ``main``).
    Read from /proc, which is quick: a restart's workers live about a second."""
    pids = []
    try:
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
    except OSError:  # it ended just now
        return []
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == WORKER_NAME:
                pids.append(int(child))
        except OSError:  # it ended just now
            pass
    return pids


def watch(command: list[str], run_dir: Path, step: int) -> dict:
    """Launch ``command`` and poll its memory until it ends: seconds from the launch to the
    metrics row of ``step``, peak RSS of the main process and of the largest worker, the
    largest worker's polled peak of private memory, in MiB, and the CPU seconds of the
    whole run (main and workers: the rusage wait4 reports), which the machine's load
    does not stretch as it stretches the wall time."""
    peaks: dict[int, tuple[int, int]] = {}  # pid: (VmHWM, private) in KiB
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "a") as log:
        launched = time.time()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "WANDB_MODE": "disabled"})
        while not (ended := os.wait4(process.pid, os.WNOHANG))[0]:
            for pid in (process.pid, *loader_workers(process.pid)):
                try:
                    hwm = memory_kib("VmHWM", f"/proc/{pid}/status")
                    private = 0 if pid == process.pid else private_kib(str(pid))
                except (OSError, RuntimeError):  # it ended just now
                    continue
                old = peaks.get(pid, (0, 0))
                peaks[pid] = (max(old[0], hwm), max(old[1], private))
            time.sleep(POLL_S)
    _, status, usage = ended
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}):\n"
                           + log_path.read_text()[-3000:])
    rows = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    done = next(row["time"] for row in rows if row["kind"] == "train" and row["step"] == step)
    images = re.search(r"\((\d+ train / \d+ val) images", log_path.read_text())
    workers = [peak for pid, peak in peaks.items() if pid != process.pid]
    seen = len(workers)
    if not workers:  # on a loaded machine the poll can miss workers that live a second
        workers = [(-1024, -1024)]  # shown as -1 MiB: none was seen
    return {"seconds": done - launched, "cpu_s": usage.ru_utime + usage.ru_stime,
            "main_mib": peaks[process.pid][0] / 1024,
            "worker_mib": max(w[0] for w in workers) / 1024,
            "worker_private_mib": max(w[1] for w in workers) / 1024, "workers": seen,
            "images": images and images[1]}


def indexes(root: str) -> list[Path]:
    return [path for split in ("train", "val") for path in index_files(Path(root, split),
                                                                        "classes")]


def one_round(root: str, out: Path, workers: int, batch: int) -> dict[str, dict]:
    """torchvision's recipe, then train.py without an index, then its restart."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    results = {"torchvision": watch(
        [sys.executable, "-m", "benchmarks.first_step", "--reference", root,
         str(out / "torchvision"), "--workers", str(workers), "--batch", str(batch)],
        out / "torchvision", 1)}
    for index in indexes(root):
        index.unlink(missing_ok=True)
    run_dir = out / "first_step"
    results["ours, first start"] = watch(train_command(root, str(out), 1, workers, batch),
                                         run_dir, 1)
    written = {path: path.stat().st_mtime_ns for path in indexes(root) if path.exists()}
    if len(written) != 2:
        raise RuntimeError(f"the first start did not index train/ and val/: {written}")
    results["ours, restart"] = watch(train_command(root, str(out), 2, workers, batch),
                                     run_dir, 2)
    if any(path.stat().st_mtime_ns != mtime for path, mtime in written.items()):
        raise RuntimeError("a restart listed the tree again: the index was rewritten")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000, help="training images")
    parser.add_argument("--val", type=int, default=1_000, help="validation images")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="loader workers per run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="each measured this many times")
    parser.add_argument("--dir", help="where the tree is written (default: the system's temp)")
    parser.add_argument("--tree", help="a tree benchmarks.data_setup.prepare wrote, to use "
                        "instead of writing one (--files, --val, --classes are then its own)")
    parser.add_argument("--reference", nargs=2, metavar=("ROOT", "RUN_DIR"),
                        help=argparse.SUPPRESS)  # torchvision's recipe, in this process
    args = parser.parse_args(argv)
    if args.reference:
        reference(*args.reference, args.workers, args.batch)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        root = args.tree or os.path.join(folder, "tree")
        if not args.tree:
            start = time.perf_counter()
            os.mkdir(root)
            prepare(root, args.files, args.classes, args.val)
            time.sleep(SETTLED_SECONDS)  # a tree written just now is listed, not indexed
            print(f"{args.files} + {args.val} files in {args.classes} class folders (hard "
                  f"links) written in {time.perf_counter() - start:.1f} s", flush=True)
        results: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for _ in range(args.rounds):
            for kind, result in one_round(root, Path(folder, "runs"), args.workers,
                                          args.batch).items():
                results[kind].append(result)
                print(f"{kind}: {json.dumps(result)}", flush=True)
        if args.tree:
            for index in indexes(root):  # the tree as it was given
                index.unlink(missing_ok=True)
    sizes = {r["images"] for rs in results.values() for r in rs}
    if len(sizes) != 1:
        raise RuntimeError(f"the runs read data sets of different sizes: {sizes}")
    print(f"{sizes.pop()} images, {args.workers} loader workers, batch "
          f"{args.batch}, median of {args.rounds} round(s), torch "
          f"{__import__('torch').__version__}, {os.cpu_count()} CPU(s)")
    print(table(results, ROWS, KINDS))


if __name__ == "__main__":
    main()
