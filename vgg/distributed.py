"""Process-group helpers for ``torchrun`` (DDP on one or many machines); every helper is a
no-op in a plain single-process run, so the same code runs on one CPU or many GPUs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vgg.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0, or the only process)."""
    return get_rank() == 0


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` (this process's GPU under torchrun) or ``cuda:N``; a
    device this machine lacks is a UserError, not torch's traceback."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank}"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested} is not a device; use auto, cpu, cuda or "
                        "cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: only cpu and cuda GPUs are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but no CUDA GPU is "
                            "available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: this machine has "
                            f"{torch.cuda.device_count()} GPU(s), numbered from 0")
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> tuple[int, int, int, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on
    GPUs, gloo on CPUs. Returns ``(rank, world_size, local_rank, device)``; without torchrun
    returns ``(0, 1, 0, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return get_rank(), get_world_size(), local_rank, dev


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where the process group's collectives take tensors: NCCL only reduces CUDA tensors
    (gloo takes both)."""
    if is_distributed() and dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all processes, on ``tensor``'s device (in place when that is
    the collective's device; ``tensor`` itself when alone). Counts kept on the CPU, such as
    evaluate.py's tally, travel to the GPU and back under NCCL."""
    if not is_distributed():
        return tensor
    device = collective_device() if tensor.device.type == "cpu" else tensor.device
    reduced = tensor.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out

