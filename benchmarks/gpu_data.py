"""Images/s of the GPU JPEG pipeline (vgg.data.gpu) and of training fed by it, against the
same training step on a synthetic batch already on the device.

    python -m benchmarks.gpu_data --device cuda    # D at 224, batch 256, 2048 JPEGs
    python -m benchmarks.gpu_data                  # CPU: tiny sizes (a smoke run)

The JPEGs are generated photo-like images at ImageNet's typical sizes (about 500x375,
about 110 KB each). Rows: decoding alone (batched decode_jpeg on the device, files
already read), the augmentation alone (S in [Smin, Smax], crop, flip, PCA
colour shift, normalisation on decoded images), both together (vgg.data.gpu.JpegLoader),
our training step on a synthetic batch, and the same step fed by JpegLoader; the ratio
column is each rate over the synthetic-data training rate.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision

from benchmarks import steps
from benchmarks.images import SHAPES, write_jpegs
from vgg.data.gpu import BatchTrainTransform, JpegLoader, decode_jpegs
from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform

# Noise and quality that give ImageNet's average file size (about 110 KB at 500x375).
IMAGENET_LIKE = {"noise": 20.0, "quality": 92}


def rate(run: Callable[[], int], device: torch.device, repeats: int) -> float:
    """Images/s of ``run`` (which returns how many images it handled), the best of
    ``repeats`` timed calls after one untimed warm-up call."""
    run()
    best = 0.0
    for _ in range(repeats):
        steps.synchronize(device)
        start = time.perf_counter()
        images = run()
        steps.synchronize(device)
        best = max(best, images / (time.perf_counter() - start))
    return best


def fed_training_rate(step: Callable, batches: Iterable, device: torch.device, warmup: int,
                      count: int) -> float:
    """Images/s of ``count`` training steps, each on the next batch ``batches`` yields,
    after ``warmup`` steps."""
    batches = iter(batches)
    for x, y in itertools.islice(batches, warmup):
        step(x, y)
    steps.synchronize(device)
    start, images = time.perf_counter(), 0
    for x, y in itertools.islice(batches, count):
        step(x, y)
        images += len(y)
    steps.synchronize(device)
    return images / (time.perf_counter() - start)


def endless(loader: JpegLoader) -> Iterable:
    """Batches of ``loader`` over epoch after epoch."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def measure_all(args, device: torch.device, files: list[str]) -> dict[str, float]:
    cpu = TrainTransform(args.image_size, tuple(args.scale), IMAGENET_MEAN, IMAGENET_STD,
                         hflip=True)
    transform = BatchTrainTransform(cpu)
    labels = np.arange(len(files)) % args.num_classes
    loader = JpegLoader(files, labels, transform, args.batch_size, device=device,
                        threads=args.threads, prefetch=args.prefetch)
    data = [torchvision.io.read_file(f) for f in files[:args.batch_size]]
    decoded, _ = decode_jpegs(data, device)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = len(files) // args.batch_size

    def whole_pipeline() -> int:
        loader.set_epoch(0)
        return sum(len(y) for _, y in itertools.islice(loader, batches))

    rates = {
        "decode (decode_jpeg)": rate(lambda: len(decode_jpegs(data, device)[0]),
                                            device, args.repeats),
        "augment (decoded images)": rate(lambda: len(transform(decoded, generator)),
                                         device, args.repeats),
        "decode + augment (JpegLoader)": rate(whole_pipeline, device, args.repeats),
    }
    if args.no_train:
        return rates
    common = (args.model_version, args.image_size, args.num_classes, device, args.seed)
    with steps.backends(steps.our_backends(device)):
        _, step = steps.our_variant(*common, compile_model=False)
        image = torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                            device=device)
        target = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
        rates["training, synthetic batch"] = steps.measure(
            step, image, target, device, args.warmup, args.steps)[0]
        rates["training fed by JpegLoader"] = fed_training_rate(
            step, endless(loader), device, args.warmup, args.steps)
    return rates


def prepare(folder: str, images: int = 64) -> None:
    """The JPEGs of ``augment_rate``: ImageNet-like, at its typical shapes."""
    write_jpegs(Path(folder), images, **IMAGENET_LIKE)


def augment_rate(folder: str, images: int = 64) -> float:
    """Images/s of the device pipeline's augmentation (BatchTrainTransform: S in [256,
    512], 224 crops, flip, colour shift) of the JPEGs ``prepare`` wrote, decoded
    beforehand, in batches of 32 on one CPU thread: the best of 3 passes after one."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    files = sorted(str(f) for f in Path(folder).glob("*.JPEG"))
    decoded, _ = decode_jpegs([torchvision.io.read_file(f) for f in files], device)
    transform = BatchTrainTransform(TrainTransform(224, (256, 512), IMAGENET_MEAN,
                                                   IMAGENET_STD, hflip=True))
    generator = torch.Generator().manual_seed(0)

    def one_pass() -> int:
        return sum(len(transform(decoded[i:i + 32], generator))
                   for i in range(0, len(decoded), 32))

    return rate(one_pass, device, 3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps.add_model_arguments(parser)
    parser.add_argument("--batch_size", type=int, help="default: 256 on GPU, 4 on CPU")
    parser.add_argument("--images", type=int, help="JPEG files per epoch (GPU 2048, CPU 8)")
    parser.add_argument("--unique", type=int, default=256,
                        help="distinct JPEGs generated; the epoch's files cycle through them")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"),
                        help="one image shape for all (default: ImageNet's typical shapes)")
    parser.add_argument("--scale", type=int, nargs=2, metavar=("SMIN", "SMAX"),
                        help="default: 256 512 at 224, in proportion at other sizes")
    parser.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1),
                        help="host threads reading and decoding files")
    parser.add_argument("--prefetch", type=int, default=4, help="batches decoded ahead")
    parser.add_argument("--steps", type=int, help="timed training steps (GPU 20, CPU 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed pipeline passes")
    parser.add_argument("--no_train", action="store_true", help="time the pipeline only")
    args = parser.parse_args(argv)
    steps.resolve_model_arguments(args, batch_size=(256, 4), images=(2048, 8), steps=(20, 2))
    args.scale = args.scale or [round(s * args.image_size / 224) for s in (256, 512)]
    steps.check_image_size(parser, args.image_size)
    if args.images < args.batch_size:
        parser.error(f"--images ({args.images}) must hold at least one --batch_size "
                     f"({args.batch_size})")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        unique = write_jpegs(Path(folder), min(args.unique, args.images), **IMAGENET_LIKE,
                             shapes=[tuple(args.shape)] if args.shape else SHAPES)
        files = list(itertools.islice(itertools.cycle(unique), args.images))
        kilobytes = sum(os.path.getsize(f) for f in files) / len(files) / 1e3
        rates = measure_all(args, device, files)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{torch.get_num_threads()} threads")
    print(f"{args.images} JPEG files per epoch ({min(args.unique, args.images)} distinct "
          f"generated ones, mean {kilobytes:.0f} KB), S in {args.scale}, "
          f"{args.image_size}px crops, batch {args.batch_size}, config {args.model_version}, "
          f"{device} ({hardware}), {args.threads} host threads, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")
    synthetic = rates.get("training, synthetic batch")
    print(f"{'stage':<32}{'images/s':>10}{'vs synthetic training':>24}")
    for name, value in rates.items():
        ratio = f"{value / synthetic:>23.2f}x" if synthetic else f"{'-':>24}"
        print(f"{name:<32}{value:>10.1f}{ratio}")


if __name__ == "__main__":
    main()
