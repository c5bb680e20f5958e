"""Peak training memory of config D at 224 per batch size, with and without activation
checkpointing, fp32 and bf16; on a GPU also the largest batch that fits cards of common sizes.

    python -m benchmarks.train_memory                 # CPU: what autograd holds for backward
    python -m benchmarks.train_memory --device cuda   # GPU: measured peaks and the fit table

On a CPU it measures the bytes autograd saves for backward (the same on any device) and adds
the fp32 weights, gradients and momentum: a lower bound. On a GPU it measures our training
step's torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn

from benchmarks import steps
from vgg.model import build_vgg


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
                network, step = steps.our_variant(args.model_version, args.image_size,
                                                  args.num_classes, device, args.seed,
                                                  compile_model=False, precision=precision)
                network.activation_checkpointing = checkpointing
                image = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
                target = torch.randint(0, args.num_classes, (batch,), device=device)
                try:
                    with steps.backends(steps.our_backends(device)):
                        _, allocated[batch] = steps.measure(step, image, target, device,
                                                            warmup=1, steps=1)
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
    steps.add_model_arguments(parser)
    args = parser.parse_args(argv)
    args.device = str(steps.resolve_device(args.device))
    args.model_version = args.model_version or "D"
    args.image_size = args.image_size or 224
    steps.check_image_size(parser, args.image_size)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        measured_gpu_memory(args, device)
    else:
        saved_activation_memory(args)


if __name__ == "__main__":
    main()
