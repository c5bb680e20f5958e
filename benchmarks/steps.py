"""The training steps the benchmarks time, and how they time them: torchvision's reference
step and ours (the trainer's own train_step), each under its own backend settings, the
per-image FLOP bound, and a timer that reports images/s and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from config import Config
from vgg.engine import configure_backends, precision_setup, prepare_model, train_step
from vgg.model import DOWNSAMPLING, TORCHVISION_NAMES, build_vgg
from vgg.optim import build_optimizer
from vgg.summary import summarize

LR, MOMENTUM, WEIGHT_DECAY = 1e-2, 0.9, 5e-4  # the paper's, and both steps'


def reference_network(version: str, image_size: int, num_classes: int, seed: int) -> nn.Module:
    """torchvision's own VGG at 224. At other sizes torchvision's VGG would pool a 1x1 map
    up to 7x7 and run a 25088-wide FC, another network than ours, so the reference step
    then runs our architecture (same layers and keys) to compare like with like."""
    torch.manual_seed(seed)
    if image_size == 224 and version in TORCHVISION_NAMES:
        import torchvision

        return getattr(torchvision.models, TORCHVISION_NAMES[version])(num_classes=num_classes)
    return build_vgg(version, num_classes=num_classes, image_size=image_size, init="kaiming")


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor,
                   target: torch.Tensor, scaler: torch.amp.GradScaler | None
                   ) -> tuple[float, float, float]:
    """torchvision references/classification/train.py, train_one_epoch's step, metrics
    included: utils.accuracy's top-1/top-5 of the step's output, and the MetricLogger's
    .item() reads of loss, acc1 and acc5, which wait for the device every step.
    Returns (loss, acc1, acc5), the accuracies in percent as torchvision logs them."""
    with torch.autocast(image.device.type, enabled=scaler is not None):
        output = model(image)
        loss = F.cross_entropy(output, target)
    optimizer.zero_grad()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    acc1, acc5 = reference_accuracy(output, target, topk=(1, 5))
    return loss.item(), acc1.item(), acc5.item()


def reference_accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...]
                       ) -> list[torch.Tensor]:
    """torchvision references/classification/utils.py's accuracy: the percentage of
    samples whose target is among the k highest scores, for each k, as device scalars."""
    with torch.inference_mode():
        _, predicted = output.topk(max(topk), dim=1, largest=True, sorted=True)
        hits = predicted.t() == target[None]
        return [hits[:k].flatten().sum(dtype=torch.float32) * (100.0 / len(target))
                for k in topk]


CUDNN_FLAGS = ("benchmark", "deterministic", "allow_tf32")


@contextmanager
def backends(configure: Callable[[], None]) -> Iterator[None]:
    """Run a variant under the backend settings ``configure`` makes, and restore the
    previous ones afterwards, so that no variant's settings (TF32, cudnn autotuning,
    deterministic algorithms) leak into the variants measured after it."""
    cudnn = {flag: getattr(torch.backends.cudnn, flag) for flag in CUDNN_FLAGS}
    matmul = torch.get_float32_matmul_precision()  # torch.backends.cuda.matmul.allow_tf32
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        configure()
        yield
    finally:
        for flag, value in cudnn.items():
            setattr(torch.backends.cudnn, flag, value)
        torch.set_float32_matmul_precision(matmul)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def reference_backends() -> None:
    """What torchvision's train.py sets (cudnn.benchmark, without
    --use-deterministic-algorithms), the rest at PyTorch's defaults: TF32 convolutions
    on, TF32 matmuls off."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(False)


def our_backends(device: torch.device) -> Callable[[], None]:
    """What train.py sets with the trainer's defaults: TF32 matmuls and convolutions on
    GPU, cudnn.benchmark on."""
    return lambda: configure_backends(device, Config.deterministic, Config.cudnn_benchmark)


def reference_variant(version, image_size, num_classes, device, seed, amp):
    model = reference_network(version, image_size, num_classes, seed).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device.type) if amp else None
    return model, lambda x, y: reference_step(model, optimizer, x, y, scaler)


def our_variant(version, image_size, num_classes, device, seed, compile_model,
                precision="auto", channels_last=None):
    """The trainer's defaults (config.py): precision auto, channels_last on GPU."""
    torch.manual_seed(seed)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    network = build_vgg(version, num_classes=num_classes, image_size=image_size)
    model = prepare_model(network, device, channels_last=channels_last, compile=compile_model,
                          distributed=False).train()
    optimizer = build_optimizer(model, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    _, dtype, scaler = precision_setup(precision, device)
    return network, lambda x, y: train_step(model, optimizer, [(x, y)], device=device,
                                            autocast_dtype=dtype, scaler=scaler,
                                            channels_last=channels_last)


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every
    millisecond (getrusage's maximum never resets, so it cannot be had per variant)."""

    def __enter__(self):
        self.peak, self._running = current_rss(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, current_rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable, image, target, device, warmup: int, steps: int):
    """(images/s, peak memory in bytes) over ``steps`` steps after ``warmup`` ones."""
    for _ in range(warmup):
        step(image, target)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        tracker = nullcontext()
    else:
        tracker = PeakRSS()
    with tracker:
        start = time.perf_counter()
        for _ in range(steps):
            step(image, target)
        synchronize(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else tracker.peak
    return steps * len(image) / seconds, peak


def training_flops_per_image(version: str, image_size: int, num_classes: int) -> float:
    """The FLOP bound of one training image: forward multiply-accumulates (vgg.summary's
    count) x 2 FLOP each x 3 for forward + the two backward products (input and weight
    gradients). Config D at 224: 15.47 G MACs, so 92.8 GFLOP."""
    with torch.device("meta"):
        model = build_vgg(version, num_classes=num_classes, image_size=image_size, init=None)
    return 3 * 2 * sum(row.macs for row in summarize(model, in_channels=3))


def resolve_device(requested: str) -> torch.device:
    """``auto``: cuda when a GPU is there, else cpu."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def resolve_model_arguments(args: argparse.Namespace, **sizes: tuple[int, int]) -> bool:
    """Fill the shared flags left unset (and ``sizes``: name=(on GPU, on CPU)) with the
    defaults of the device: config D at 224 on a GPU, A at 32 on a CPU. Returns whether the
    device is a GPU."""
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.device = str(device)
    args.model_version = args.model_version or ("D" if gpu else "A")
    args.image_size = args.image_size or (224 if gpu else 32)
    for name, (on_gpu, on_cpu) in sizes.items():
        setattr(args, name, getattr(args, name) or (on_gpu if gpu else on_cpu))
    return gpu


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every training benchmark shares: where, which network, which seed."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--model_version", default=None, help="default: D on GPU, A on CPU")
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: 224 on GPU, 32 on CPU")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)


def check_image_size(parser: argparse.ArgumentParser, image_size: int) -> None:
    if image_size % DOWNSAMPLING:
        parser.error(f"--image_size must be a multiple of {DOWNSAMPLING}")
