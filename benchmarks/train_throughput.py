"""Training throughput and peak memory: torchvision's reference step against ours, side by side.

    python benchmarks/train_throughput.py                      # CPU: config A at 32x32
    python benchmarks/train_throughput.py --device cuda        # GPU: config D at 224, batch 256
    python benchmarks/train_throughput.py --memory             # memory of D at 224 per batch

All variants run in this one process on the same synthetic batch, already on the device,
so only the training step differs:
  reference fp32  the plain step of torchvision's references/classification/train.py
                  (NCHW, fp32, SGD with torch's default foreach kernels)
  reference amp   the same with its --amp: fp16 autocast and a GradScaler
  ours            vgg.training.train_step with the trainer's defaults: bf16 autocast on
                  GPU (fp32 on CPU), channels_last on GPU, fused SGD on GPU; torch.compile
                  off and on
Warm-up steps (and compilation) are excluded from the timings.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgg.model import DOWNSAMPLING, build_vgg  # noqa: E402
from vgg.training import build_optimizer, precision_setup, prepare_model, train_step  # noqa: E402

TORCHVISION_NAMES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
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
                   target: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """torchvision references/classification/train.py, train_one_epoch's step."""
    with torch.autocast(image.device.type, enabled=scaler is not None):
        loss = F.cross_entropy(model(image), target)
    optimizer.zero_grad()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


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
    variants = {
        "reference fp32": lambda: reference_variant(*common, amp=False),
        "reference amp (fp16)": lambda: reference_variant(*common, amp=True),
        "ours": lambda: our_variant(*common, compile_model=False),
        "ours + compile": lambda: our_variant(*common, compile_model=True),
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
    for name, make in variants.items():
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


def saved_bytes(model: nn.Module, batch: int, dtype: torch.dtype | None) -> int:
    """Bytes autograd holds for backward at its peak, counted from the tensors themselves
    (saved_tensors_hooks), so the figure is the same on any device; deduplicated by
    storage, as the allocator holds each storage once. With activation checkpointing,
    backward recomputes one stage at a time: its largest stage is held on top."""
    if model.activation_checkpointing:
        model.activation_checkpointing = False
        stage_inputs = [torch.Size((batch, 3, model.image_size, model.image_size))]
        stages = model.stages()
        with torch.device("meta"):
            for stage in stages[:-1]:
                stage_inputs.append(stage(torch.empty(stage_inputs[-1])).shape)
        recomputed = max(saved_tensor_bytes(stage, shape, dtype, model.parameters())
                         for stage, shape in zip(stages, stage_inputs, strict=True))
        model.activation_checkpointing = True
        shape = (batch, 3, model.image_size, model.image_size)
        return saved_tensor_bytes(model, shape, dtype, model.parameters()) + recomputed
    shape = (batch, 3, model.image_size, model.image_size)
    return saved_tensor_bytes(model, shape, dtype, model.parameters())


def saved_tensor_bytes(module: nn.Module, input_shape, dtype, parameters) -> int:
    params = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        module(torch.randn(input_shape))
    return sum(storages.values())


def saved_activation_memory(args) -> None:
    """Measured saved-activation bytes, split into what grows with the batch (per image)
    and what does not (autocast's low-precision weight copies), and what batches of
    64/128/256 need with the fp32 weights, gradients and SGD momentum added."""
    model = build_vgg(args.model_version, image_size=args.image_size, init=None)
    params = sum(p.numel() for p in model.parameters())
    state = params * 4 * 3
    print(f"config {args.model_version} at {args.image_size}x{args.image_size}: {params:,} "
          f"parameters; fp32 weights + gradients + momentum = {state / 2**30:.2f} GiB")
    print(f"{'precision':<10}{'checkpointing':<15}{'per image':>12}{'fixed':>12}"
          + "".join(f"{f'batch {b}':>12}" for b in (64, 128, 256)))
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for checkpointing in (False, True):
            model.activation_checkpointing = checkpointing
            one, three = saved_bytes(model, 1, dtype), saved_bytes(model, 3, dtype)
            per_image = (three - one) // 2
            fixed = state + one - per_image
            row = "".join(f"{(fixed + per_image * b) / 2**30:>8.1f} GiB" for b in (64, 128, 256))
            print(f"{name:<10}{'on' if checkpointing else 'off':<15}"
                  f"{per_image / 2**20:>8.1f} MiB{fixed / 2**30:>8.2f} GiB{row}")
    print("measured: the bytes autograd holds for backward (at batch 1 and 3; per image is "
          "the\ndifference). The batch columns add them up: a lower bound, before "
          "activation\ngradients, cuDNN workspace and fragmentation. Measured GPU peaks: "
          "--device cuda.")


def measured_gpu_memory(args, device: torch.device) -> None:
    """Peak torch.cuda.max_memory_allocated of our training step, per batch size."""
    batches = (64, 128, 256)
    print(f"config {args.model_version} at {args.image_size}x{args.image_size} on "
          f"{torch.cuda.get_device_name(device)}: peak memory of one training step")
    print(f"{'precision':<10}{'checkpointing':<15}" + "".join(f"{f'batch {b}':>12}"
                                                              for b in batches))
    for precision in ("fp32", "bf16"):
        for checkpointing in (False, True):
            row = ""
            for batch in batches:
                network, step = our_variant(args.model_version, args.image_size,
                                            args.num_classes, device, args.seed,
                                            compile_model=False, precision=precision)
                network.activation_checkpointing = checkpointing
                image = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
                target = torch.randint(0, args.num_classes, (batch,), device=device)
                try:
                    _, peak = measure(step, image, target, device, warmup=1, steps=1)
                    row += f"{peak / 2**30:>8.1f} GiB"
                except torch.OutOfMemoryError:
                    row += f"{'OOM':>12}"
                del network, step, image, target
                torch.cuda.empty_cache()
            print(f"{precision:<10}{'on' if checkpointing else 'off':<15}{row}")


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
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.memory and device.type == "cuda":
        measured_gpu_memory(args, device)
    elif args.memory:
        saved_activation_memory(args)
    else:
        throughput(args, device)


if __name__ == "__main__":
    main()
