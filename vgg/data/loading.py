"""Batches of a dataset: build_loader's seeded, optionally sharded DataLoader that warns
once per pass about the image files its dataset had to skip."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vgg.data.sampling import ShardSampler


class EpochLoader(DataLoader):
    """A DataLoader that warns once at the end of each pass if its dataset skipped files."""

    epochs_done = 0

    # A generator around the base iterator rather than a _BaseDataLoaderIter: callers
    # only iterate over it.
    def __iter__(self) -> Iterator:  # type: ignore[override]
        yield from super().__iter__()
        self.epochs_done += 1
        dataset = self.dataset
        while not hasattr(dataset, "unreadable_files") and hasattr(dataset, "dataset"):
            dataset = dataset.dataset  # through Subset and other wrappers
        skipped: list[str] = getattr(dataset, "unreadable_files", list)()
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            warnings.warn(f"epoch {self.epochs_done}: skipped {len(skipped)} unreadable image "
                          f"file(s), each replaced by the next readable image: {shown}",
                          stacklevel=2)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0,
                 seed: int = 0, distributed: bool = False, drop_last: bool | None = None,
                 sampler: Sampler | None = None) -> EpochLoader:
    """Batches of `dataset`: shuffled by a `seed`ed generator when `train` (which also seeds
    the workers' augmentation draws), in order otherwise. `distributed` shards it: for
    training with a DistributedSampler (call loader.sampler.set_epoch(epoch) every epoch),
    for evaluation unpadded, so every sample counts exactly once. A given `sampler`
    (train.py's resumable one) replaces all of that. drop_last defaults to `train`:
    evaluation must see every image."""
    if sampler is None and distributed:
        sampler = (DistributedSampler(dataset, shuffle=True, seed=seed) if train
                   else ShardSampler(dataset))
    return EpochLoader(
        dataset, batch_size, shuffle=train and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0, drop_last=train if drop_last is None else drop_last,
        generator=torch.Generator().manual_seed(seed))
