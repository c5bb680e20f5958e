"""A smoke run of the distributed GPU code paths under torchrun: the process group (NCCL on
GPUs, gloo on CPUs) joined even by a single process, SyncBN, DDP, the fused optimizer and
the fp32 class-score layer under bf16 autocast, the all-reduce of CPU tallies.

    python -m torch.distributed.run --standalone --nproc_per_node 1 \\
        -m benchmarks.distributed_smoke --device cuda

Trains a small VGG-BN for a few steps on a fixed synthetic batch (the loss must fall),
validates (every sample counted once over the processes), and prints one line per check.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from vgg.distributed import all_reduce_sum, get_rank, get_world_size
from vgg.engine import precision_setup, prepare_model, train_step, validate
from vgg.model import build_vgg
from vgg.optim import build_optimizer


def smoke(device: torch.device, steps: int) -> list[str]:
    """The checks' report lines; raises AssertionError at the first that fails."""
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(0)
    network = build_vgg("A", num_classes=10, image_size=32, batch_norm=True, fc_width=64,
                        init="kaiming")
    channels_last = device.type == "cuda"
    model = prepare_model(network, device, channels_last=channels_last, distributed=True)
    sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert sync_bn == (device.type == "cuda"), "SyncBN on GPUs only"
    optimizer = build_optimizer(model, lr=0.02)
    fused = optimizer.defaults.get("fused")
    _, dtype, scaler = precision_setup("auto", device)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(32, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)
    losses = []
    for _ in range(steps):
        result = train_step(model, optimizer, [(x, y)], device=device, autocast_dtype=dtype,
                            scaler=scaler, channels_last=channels_last)
        assert result.finite and result.samples == 32 * world
        losses.append(result.loss_sum / result.samples)
    assert losses[-1] < losses[0], f"the loss did not fall: {losses}"
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        scores = model(x[:2].to(device))
    assert scores.dtype == torch.float32, f"class scores in {scores.dtype}"
    tally = all_reduce_sum(torch.tensor([1.0, rank]))  # a CPU tensor, as evaluate.py's
    assert tally.device.type == "cpu" and tally.tolist() == [world, sum(range(world))]
    metrics = validate(model.module, [(x[:7 + rank], y[:7 + rank])], device,
                       autocast_dtype=dtype, channels_last=channels_last)  # as train.py's
    assert metrics["n"] == sum(7 + r for r in range(world))
    return [f"backend {dist.get_backend()}, {world} process(es), device {device}, "
            f"torch {torch.__version__}",
            f"SyncBN {sync_bn}, fused SGD {fused}, autocast {dtype}, class scores "
            f"{scores.dtype}",
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {steps} steps",
            f"CPU tally all-reduced: {tally.tolist()}; validation counted {metrics['n']}",
            "distributed smoke: OK"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Joined even when WORLD_SIZE is 1, so the collectives really run.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    rank = get_rank()
    try:
        lines = smoke(device, args.steps)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
