"""Training throughput and peak memory: torchvision's reference step against ours, side by side.

    python benchmarks/train_throughput.py                      # CPU: config A at 32x32
    python benchmarks/train_throughput.py --device cuda        # GPU: config D at 224, batch 256
    python benchmarks/train_throughput.py --memory             # memory of D at 224 per batch

All variants run in this one process on the same synthetic batch, already on the device,
so only the training step differs:
  reference fp32  the plain step of torchvision's references/classification/train.py
                  (NCHW, fp32, SGD with torch's default foreach kernels), with the per-step
                  top-1/top-5 and .item() reads of its MetricLogger, under its backend
                  settings: cudnn.benchmark on, TF32 at PyTorch's defaults (matmuls off)
  reference amp   the same with its --amp: fp16 autocast and a GradScaler
  ours            vgg.training.train_step with the trainer's defaults: bf16 autocast on
                  GPU (fp32 on CPU), channels_last on GPU, fused SGD on GPU, and train.py's
                  configure_backends (TF32 on GPU); torch.compile off and on
Each variant's backend settings are restored after it, so none leaks into the next.
Warm-up steps (and compilation) are excluded from the timings.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config  # noqa: E402
from vgg.model import DOWNSAMPLING, TORCHVISION_NAMES, build_vgg  # noqa: E402
from vgg.training import (  # noqa: E402
    build_optimizer,
    configure_backends,
    precision_setup,
    prepare_model,
    train_step,
)

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


def throughput(args, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                        generator=generator).to(device)
    target = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator
                           ).to(device)
    common = (args.model_version, args.image_size, args.num_classes, device, args.seed)
    variants = {  # name: (build it, its backend settings)
        "reference fp32": (lambda: reference_variant(*common, amp=False), reference_backends),
        "reference amp (fp16)": (lambda: reference_variant(*common, amp=True),
                                 reference_backends),
        "ours": (lambda: our_variant(*common, compile_model=False), our_backends(device)),
        "ours + compile": (lambda: our_variant(*common, compile_model=True),
                           our_backends(device)),
    }
    if device.type != "cuda":  # fp16 autocast + GradScaler is a GPU recipe
        del variants["reference amp (fp16)"]
    if args.no_compile:
        del variants["ours + compile"]
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{torch.get_num_threads()} threads")
    print(f"config {args.model_version}, {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {args.num_classes} classes, {device} ({hardware}), warm-up "
          f"{args.warmup}, timed {args.steps} steps, torch {torch.__version__}")
    results = {}
    for name, (make, configure) in variants.items():
        with backends(configure):
            _, step = make()
            results[name] = measure(step, image, target, device, args.warmup, args.steps)
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fp32 = results["reference fp32"][0]
    amp = results.get("reference amp (fp16)", (None,))[0]
    print(f"{'variant':<22}{'images/s':>10}{'vs ref fp32':>13}{'vs ref amp':>12}"
          f"{'peak memory':>14}")
    for name, (speed, peak) in results.items():
        vs_amp = f"{speed / amp:>11.2f}x" if amp else f"{'-':>12}"
        print(f"{name:<22}{speed:>10.1f}{speed / fp32:>12.2f}x{vs_amp}{peak / 2**30:>10.2f} GiB")
    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak process RSS"
    print(f"(peak memory: {kind} during the timed steps)")


class Linear(NamedTuple):
    """Bytes that grow linearly with the batch: ``fixed + per_image * batch``."""

    fixed: int
    per_image: int

    @classmethod
    def through(cls, one: int, two: int) -> Linear:
        """The line through the bytes at batch 1 and at batch 2."""
        return cls(fixed=2 * one - two, per_image=two - one)

    def at(self, batch: int) -> int:
        return self.fixed + self.per_image * batch


class SavedBytes(NamedTuple):
    """The bytes autograd holds for backward at its peak, as a function of the batch.
    Without activation checkpointing: what the forward saves (``held``). With it, backward
    recomputes one stage at a time, so on top of ``held`` (the stage inputs and the
    classifier's tensors) it holds what one stage saves: the largest ``recomputed`` one at
    that batch. Each part is linear in the batch, their maximum is not: under bf16 the
    last stage (its fixed bf16 weight copies) is the largest at a batch of one or two and
    the first (its activations) at real batches, so this takes the maximum per batch."""

    held: Linear
    recomputed: tuple[Linear, ...] = ()  # one per stage; empty without checkpointing

    def at(self, batch: int) -> int:
        return self.held.at(batch) + max((s.at(batch) for s in self.recomputed), default=0)

    def largest_stage(self, batch: int) -> int | None:
        """The recomputed stage (1-based) that sets the peak at ``batch``."""
        if not self.recomputed:
            return None
        return 1 + max(range(len(self.recomputed)), key=lambda i: self.recomputed[i].at(batch))

    def line(self, batch: int) -> Linear:
        """Fixed and per-image bytes of the line that sets the peak at ``batch``."""
        stage = self.largest_stage(batch)
        extra = self.recomputed[stage - 1] if stage else Linear(0, 0)
        return Linear(self.held.fixed + extra.fixed, self.held.per_image + extra.per_image)


def saved_bytes_by_batch(model: nn.Module, dtype: torch.dtype | None) -> SavedBytes:
    """SavedBytes measured at batch 1 and 2, each part separately."""
    held = Linear.through(held_bytes(model, 1, dtype), held_bytes(model, 2, dtype))
    if not model.activation_checkpointing:
        return SavedBytes(held)
    one, two = recomputed_bytes(model, 1, dtype), recomputed_bytes(model, 2, dtype)
    return SavedBytes(held, tuple(Linear.through(a, b) for a, b in zip(one, two, strict=True)))


def saved_bytes(model: nn.Module, batch: int, dtype: torch.dtype | None) -> int:
    """SavedBytes measured directly at ``batch``."""
    held = held_bytes(model, batch, dtype)
    if not model.activation_checkpointing:
        return held
    return held + max(recomputed_bytes(model, batch, dtype))


def held_bytes(model: nn.Module, batch: int, dtype: torch.dtype | None) -> int:
    """What the forward leaves saved for backward (with activation checkpointing: the
    stage inputs and the classifier's tensors), counted from the tensors themselves
    (saved_tensors_hooks), so the figure is the same on any device; deduplicated by
    storage, as the allocator holds each storage once. Parameters are not counted (they
    are in the fp32 state); autocast's low-precision copies of them are."""
    image = torch.randn(batch, 3, model.image_size, model.image_size)
    return saved_tensor_bytes(model, image, dtype, model.parameters())[0]


def recomputed_bytes(model: nn.Module, batch: int, dtype: torch.dtype | None) -> list[int]:
    """Per stage, what its recomputation in backward saves beyond ``held_bytes``: its input
    is held already (and, where a layer saves that very tensor, counted once)."""
    x = torch.randn(batch, 3, model.image_size, model.image_size)
    sizes = []
    for stage in model.stages():
        size, x = saved_tensor_bytes(stage, x, dtype, [*model.parameters(), x])
        sizes.append(size)
        x = x.detach().requires_grad_()  # later stages' inputs require grad, as in training
    return sizes


def saved_tensor_bytes(module: nn.Module, x: torch.Tensor, dtype, exclude
                       ) -> tuple[int, torch.Tensor]:
    """Bytes of the storages ``module(x)`` saves for backward, leaving out those of the
    tensors in ``exclude``; and its output."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        output = module(x)
    return sum(storages.values()), output


def saved_activation_memory(args) -> None:
    """Measured saved-activation bytes, split into what grows with the batch (per image)
    and what does not (autocast's low-precision weight copies), and what batches of
    64/128/256 need with the fp32 weights, gradients and SGD momentum added."""
    batches = (64, 128, 256)
    model = build_vgg(args.model_version, image_size=args.image_size, init=None)
    params = sum(p.numel() for p in model.parameters())
    state = params * 4 * 3
    print(f"config {args.model_version} at {args.image_size}x{args.image_size}: {params:,} "
          f"parameters; fp32 weights + gradients + momentum = {state / 2**30:.2f} GiB")
    print(f"{'precision':<10}{'checkpointing':<15}{'per image':>12}{'fixed':>12}"
          + "".join(f"{f'batch {b}':>12}" for b in batches))
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for checkpointing in (False, True):
            model.activation_checkpointing = checkpointing
            saved = saved_bytes_by_batch(model, dtype)
            line = saved.line(batches[-1])
            stages = sorted({saved.largest_stage(b) for b in batches})
            mode = f"on (stage {'/'.join(map(str, stages))})" if checkpointing else "off"
            row = "".join(f"{(state + saved.at(b)) / 2**30:>8.1f} GiB" for b in batches)
            print(f"{name:<10}{mode:<15}{line.per_image / 2**20:>8.1f} MiB"
                  f"{(state + line.fixed) / 2**30:>8.2f} GiB{row}")
    print("measured: the bytes autograd holds for backward, at batch 1 and 2 (per image is "
          "the\ndifference). With checkpointing, backward holds the stage inputs and the "
          "classifier's\ntensors plus one recomputed stage: the largest at each batch (the "
          "stage in brackets;\nper image and fixed are for batch 256). The batch columns "
          "add them up: a lower\nbound, before activation gradients, cuDNN workspace and "
          "fragmentation. Measured GPU\npeaks: --device cuda.")


GPU_SIZES_GIB = (16, 24, 40, 48, 80)
BATCH_GRID = (32, 64, 96, 128, 192, 256, 384, 512)


def largest_batch_that_fits(footprints: dict[int, int], budget: int) -> int | None:
    """The largest measured batch whose footprint (bytes) is within ``budget``."""
    fitting = [batch for batch, used in footprints.items() if used <= budget]
    return max(fitting, default=None)


def measured_gpu_memory(args, device: torch.device) -> None:
    """Peak memory of our training step per batch size, and from the same measurements the
    largest batch that fits GPUs of common sizes. A batch's footprint is what the process
    would hold on the card: the caching allocator's peak reservation
    (torch.cuda.max_memory_reserved) plus the CUDA context, which PyTorch does not see."""
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(device)
    context = total - free - torch.cuda.memory_reserved(device)
    print(f"config {args.model_version} at {args.image_size}x{args.image_size} on "
          f"{torch.cuda.get_device_name(device)} ({total / 2**30:.0f} GiB, CUDA context "
          f"{context / 2**30:.2f} GiB): peak torch.cuda.max_memory_allocated of one step")
    shown = (64, 128, 256)
    print(f"{'precision':<10}{'checkpointing':<15}" + "".join(f"{f'batch {b}':>12}"
                                                              for b in shown))
    # Only sizes up to this GPU's own (2% slack for how vendors round): beyond it an OOM
    # here says nothing about the larger card.
    sizes = [g for g in GPU_SIZES_GIB if g * 2**30 <= 1.02 * total]
    fits = {}
    for precision in ("fp32", "bf16"):
        for checkpointing in (False, True):
            allocated, footprints = {}, {}
            for batch in BATCH_GRID:
                network, step = our_variant(args.model_version, args.image_size,
                                            args.num_classes, device, args.seed,
                                            compile_model=False, precision=precision)
                network.activation_checkpointing = checkpointing
                image = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
                target = torch.randint(0, args.num_classes, (batch,), device=device)
                try:
                    with backends(our_backends(device)):
                        _, allocated[batch] = measure(step, image, target, device, warmup=1,
                                                      steps=1)
                    footprints[batch] = torch.cuda.max_memory_reserved(device) + context
                except torch.OutOfMemoryError:
                    break  # larger batches will not fit either
                finally:
                    del network, step, image, target
                    torch.cuda.empty_cache()
            mode = "on" if checkpointing else "off"
            print(f"{precision:<10}{mode:<15}" + "".join(
                f"{allocated[b] / 2**30:>8.1f} GiB" if b in allocated else f"{'OOM':>12}"
                for b in shown))
            fits[precision, mode] = {size: largest_batch_that_fits(footprints, size * 2**30)
                                     for size in sizes}
    print(f"\nlargest batch of {BATCH_GRID} that fits, by GPU memory (measured footprints; "
          f"'{BATCH_GRID[-1]}+': the whole grid fits, '-': not even {BATCH_GRID[0]})")
    print(f"{'precision':<10}{'checkpointing':<15}" + "".join(f"{f'{g} GiB':>9}"
                                                              for g in sizes))
    for (precision, mode), by_size in fits.items():
        cells = ["-" if b is None else f"{b}+" if b == BATCH_GRID[-1] else str(b)
                 for b in by_size.values()]
        print(f"{precision:<10}{mode:<15}" + "".join(f"{c:>9}" for c in cells))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--model_version", default=None, help="default: D on GPU, A on CPU")
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: 224 on GPU, 32 on CPU")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 30, CPU 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_compile", action="store_true", help="skip the compiled variant")
    parser.add_argument("--memory", action="store_true",
                        help="report activation memory per image and per batch instead")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    memory_mode = args.memory
    args.model_version = args.model_version or ("D" if gpu or memory_mode else "A")
    args.image_size = args.image_size or (224 if gpu or memory_mode else 32)
    args.batch_size = args.batch_size or (256 if gpu else 32)
    args.steps = args.steps or (30 if gpu else 10)
    if args.image_size % DOWNSAMPLING:
        parser.error(f"--image_size must be a multiple of {DOWNSAMPLING}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)  # each variant sets its own backends (TF32, cudnn)
    if args.memory and device.type == "cuda":
        measured_gpu_memory(args, device)
    elif args.memory:
        saved_activation_memory(args)
    else:
        throughput(args, device)


if __name__ == "__main__":
    main()
