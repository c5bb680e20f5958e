"""Process-group helpers for ``torchrun`` (DDP on one or many machines); every helper is a
no-op in a plain single-process run, so the same code runs on one CPU or many GPUs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

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
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank}"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but no CUDA GPU is "
                            "available here; use --device cpu (or auto)")
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


def shard_indices(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s share of ``range(n)``, unpadded: every index belongs to exactly one
    rank (shards differ in length by at most one), so summed counts equal ``n``."""
    return range(rank, n, world)


class ShardSampler(Sampler[int]):
    """Sequential, unpadded shard of a dataset for evaluation (unlike DistributedSampler,
    which pads with duplicates so that every rank has the same length)."""

    def __init__(self, dataset_or_len, rank: int | None = None, world: int | None = None):
        self.n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        self.rank = get_rank() if rank is None else rank
        self.world = get_world_size() if world is None else world

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(self.n, self.rank, self.world))

    def __len__(self) -> int:
        return len(shard_indices(self.n, self.rank, self.world))


class ResumableSampler(Sampler[int]):
    """Training order: a fresh permutation per epoch drawn from ``(seed, epoch)`` alone, cut
    to a multiple of ``world`` (the < world left-over samples change every epoch) and dealt
    round-robin to the ranks, starting ``start`` samples into this rank's share. Because
    the order depends on nothing but (seed, epoch), a resumed run sees exactly the samples
    the interrupted one had not yet seen. ``set_epoch(epoch, start)`` before each epoch.

    With ``with_seeds`` it yields ``(index, sample_seed)`` pairs, the seed a function of
    (seed, epoch, position in the epoch's order) only, for vgg.training.SeededSamples: then
    the augmentation of every sample is also independent of workers and interruptions."""

    def __init__(self, n: int, seed: int = 0, rank: int | None = None,
                 world: int | None = None, shuffle: bool = True, with_seeds: bool = False):
        self.n, self.seed, self.shuffle, self.with_seeds = n, seed, shuffle, with_seeds
        self.rank = get_rank() if rank is None else rank
        self.world = get_world_size() if world is None else world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Samples per rank per epoch."""
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        positions = torch.arange(self.per_rank() * self.world)[self.rank:: self.world]
        positions = positions[self.start:]
        indices = order[positions].tolist()
        if not self.with_seeds:
            return iter(indices)
        base = (self.seed * 1_000_003 + self.epoch) % 2**30 * 2**32
        return zip(indices, (base + positions).tolist(), strict=True)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)
