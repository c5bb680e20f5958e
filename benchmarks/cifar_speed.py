"""Time to accuracy on CIFAR-10 with the whole training set held on the GPU: VGG-16-BN
(config D, small-input, BatchNorm) trained from vgg.data.resident.ResidentLoader batches
with the trainer's own step, validated on the held-out split after every epoch.

    python -m benchmarks.cifar_speed --zip .carry/cifar10-train-jpeg.zip --device cuda

Reads the 50,000 training JPEGs straight from cifar10-train-jpeg.zip (train/<class>/*.jpg)
in the order make_pickles.py writes them, so the held-out 10% is the one `--dataset
Cifar10` validates on. Prints validation top-1 and the seconds of training (data on the
device, model built; torch.compile's compilation, if asked for, counted) after every epoch.
"""

from __future__ import annotations

import argparse
import time
import zipfile

import numpy as np
import torch
import torchvision

from benchmarks import steps
from vgg.data import dataset_spec, holdout
from vgg.data.gpu import BatchTrainTransform
from vgg.data.resident import ResidentLoader
from vgg.engine import precision_setup, prepare_model, train_step, validate
from vgg.model import build_vgg
from vgg.optim import LRSchedule, build_optimizer
from vgg.transforms import train_transform


def read_cifar_zip(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels) from the JPEG zip, in make_pickles.py's order:
    files sorted by name, then permuted by numpy's default_rng(0); labels index the sorted
    class folders (CIFAR-10's own class order)."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        data = [torch.frombuffer(bytearray(archive.read(n)), dtype=torch.uint8) for n in names]
    classes = sorted({name.split("/")[1] for name in names})
    labels = np.array([classes.index(name.split("/")[1]) for name in names])
    decoded = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
    images = torch.stack(decoded).permute(0, 2, 3, 1).numpy()
    order = np.random.default_rng(0).permutation(len(labels))
    return images[order], labels[order]


def validation_batches(images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int,
                       device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out images normalised once, on the device, in batches (the evaluation
    transform of a 32-pixel dataset is the normalisation alone)."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean, device=device)[:, None, None]) / \
        torch.tensor(std, device=device)[:, None, None]
    y = torch.as_tensor(labels, device=device)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def train(args, device: torch.device) -> None:
    images, labels = read_cifar_zip(args.zip)
    kept, held_out = holdout(len(labels), 0.1, 0)
    # The whole of each split unless a dry run asks for fewer.
    kept, held_out = kept[:args.train_subset], held_out[:args.val_subset]
    spec = dataset_spec("Cifar10")
    transform = BatchTrainTransform(train_transform(spec, 32))
    loader = ResidentLoader(images[kept], labels[kept], transform, args.batch_size,
                            device=device, seed=args.seed)
    val = validation_batches(images[held_out], labels[held_out], spec.mean, spec.std, 1000,
                             device)
    torch.manual_seed(args.seed)
    network = build_vgg(args.model_version, num_classes=10, image_size=32, batch_norm=True,
                        fc_width=args.fc_width, init="kaiming")
    channels_last = device.type == "cuda"
    model = prepare_model(network, device, channels_last=channels_last,
                          compile=args.compile, distributed=False)
    optimizer = build_optimizer(model, lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    schedule = LRSchedule(optimizer, "cosine", total_steps=args.epochs * len(loader),
                          warmup_steps=round(args.warmup_epochs * len(loader)))
    _, dtype, scaler = precision_setup("auto", device)
    print(f"CIFAR-10: {len(kept)} training images on {device}, {len(held_out)} held out; "
          f"config {args.model_version}-BN, batch {args.batch_size}, lr {args.lr}, "
          f"{args.epochs} epochs, compile {args.compile}, torch {torch.__version__}")
    print(f"{'epoch':>5}{'train loss':>12}{'val top-1':>11}{'seconds':>9}")
    with steps.backends(steps.our_backends(device)):
        steps.synchronize(device)
        start, step = time.perf_counter(), 0
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            loss = samples = 0.0
            for x, y in loader:
                schedule.update(step)
                result = train_step(model, optimizer, [(x, y)], device=device,
                                    autocast_dtype=dtype, scaler=scaler,
                                    label_smoothing=args.label_smoothing,
                                    channels_last=channels_last)
                step, loss, samples = step + 1, loss + result.loss_sum, samples + len(y)
            metrics = validate(model, val, device, autocast_dtype=dtype,
                               channels_last=channels_last)
            steps.synchronize(device)
            print(f"{epoch + 1:>5}{loss / samples:>12.3f}{1 - metrics['top1_err']:>11.2%}"
                  f"{time.perf_counter() - start:>9.1f}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", required=True, help="cifar10-train-jpeg.zip")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--model_version", default="D")
    parser.add_argument("--fc_width", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--label_smoothing", type=float, default=0.1)
    parser.add_argument("--warmup_epochs", type=float, default=2.0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_subset", type=int, default=None,
                        help="train on the first N training images only (a dry run)")
    parser.add_argument("--val_subset", type=int, default=None,
                        help="validate on the first N held-out images only (a dry run)")
    args = parser.parse_args(argv)
    train(args, steps.resolve_device(args.device))


if __name__ == "__main__":
    main()
