"""Which samples each process reads, in which order: unpadded evaluation shards, the
resumable training order, and per-sample augmentation seeds."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vgg.distributed import get_rank, get_world_size


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


class ResumableSampler(Sampler[int | tuple[int, int]]):
    """Training order: a fresh permutation per epoch drawn from ``(seed, epoch)`` alone, cut
    to a multiple of ``world`` (the < world left-over samples change every epoch) and dealt
    round-robin to the ranks, starting ``start`` samples into this rank's share. Because
    the order depends on nothing but (seed, epoch), a resumed run sees exactly the samples
    the interrupted one had not yet seen. ``set_epoch(epoch, start)`` before each epoch.

    With ``with_seeds`` it yields ``(index, sample_seed)`` pairs, the seed a function of
    (seed, epoch, position in the epoch's order) only, for :class:`SeededSamples`: then
    the augmentation of every sample is also independent of workers and interruptions.

    With ``chunks`` (each sample's shard in a shard set) the permutation is
    :func:`chunked_permutation`'s: shard after shard, for file systems that read whole
    shards faster than scattered images; still a function of (seed, epoch) alone."""

    def __init__(self, n: int, seed: int = 0, rank: int | None = None,
                 world: int | None = None, shuffle: bool = True, with_seeds: bool = False,
                 chunks: np.ndarray | None = None):
        self.n, self.seed, self.shuffle, self.with_seeds = n, seed, shuffle, with_seeds
        self.chunks = None if chunks is None else torch.as_tensor(chunks, dtype=torch.int64)
        self.rank = get_rank() if rank is None else rank
        self.world = get_world_size() if world is None else world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Samples per rank per epoch."""
        return self.n // self.world

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator) if self.chunks is None \
                else chunked_permutation(self.chunks, generator)
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


def chunked_permutation(chunks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(len(chunks))`` that takes the chunks (``chunks[i]``:
    sample i's) one after another in a random order, each chunk's samples consecutively in
    a random order of their own."""
    within = torch.randperm(len(chunks), generator=generator)
    chunk_rank = torch.randperm(int(chunks.max()) + 1, generator=generator)
    return within[torch.argsort(chunk_rank[chunks[within]], stable=True)]


def generator_seed(sample_seed: int) -> int:
    """A seed for torch's generators from one of ResumableSampler's sample seeds ((seed,
    epoch) in the high 32 bits, position in the low): a sample's, or a batch's first.
    torch's CPU generator keeps only a seed's low 32 bits, so the seed is first mixed
    (splitmix64's finaliser, a bijection) and cut to 32 bits: else position k would draw
    alike in every epoch and for every --seed."""
    mask = 2**64 - 1
    z = (sample_seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class SeededSamples(Dataset):
    """Wraps a dataset whose transforms draw from torch's global CPU generator: item
    ``(index, seed)`` is ``dataset[index]`` drawn with that generator seeded by
    ``generator_seed(seed)`` (the caller's generator state is restored afterwards). With
    ResumableSampler's per-sample seeds, augmentation no longer depends on worker count or
    interruptions.

    Only the CPU generator is seeded and saved, which is all the CPU transforms draw from:
    ``torch.manual_seed`` would also seed every CUDA generator (0.1-1.6 ms a call on a CUDA
    build, more than a 32-pixel sample's whole augmentation), and ``fork_rng`` saves more
    than it needs to."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        # torch's Dataset declares no __len__ (it is optional); the datasets wrapped here
        # all have one, as torch's own DataLoader assumes with the same ignore.
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(generator_seed(seed))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)
