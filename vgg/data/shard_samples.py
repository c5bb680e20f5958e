"""Random access to the images of a shard set's split (vgg/data/shard_set.py): one
``os.pread`` per image at the offset its index recorded, the shards opened lazily in each
process (a forked loader worker opens its own)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from vgg.data.decoding import decode_bytes
from vgg.data.file_list import FileList

# A process keeps at most this many shards open (the fd limit is often 1024), the most
# recently read ones.
OPEN_SHARDS = 64
TAR_BLOCK = 512  # a tar member's header precedes its data in one block


class ShardSamples(Sequence[str]):
    """The images of one split of a shard set, in the source's order: ``decode(i)`` gives
    image i's pixels as ``decode_image`` gives the file's; item i names it
    (``<shard>:<source name>``) for messages. ``subset`` shares the arrays."""

    def __init__(self, root: Path, shard_names: Sequence[str], names: FileList,
                 shard: np.ndarray, offset: np.ndarray, size: np.ndarray):
        self.root, self.shard_names, self.names = root, tuple(shard_names), names
        self.shard, self.offset, self.size = shard, offset, size
        self._open: OrderedDict[int, int] = OrderedDict()  # shard -> fd, this process's

    def subset(self, indices: np.ndarray) -> ShardSamples:
        return ShardSamples(self.root, self.shard_names, self.names.subset(indices),
                            self.shard[indices], self.offset[indices], self.size[indices])

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return f"{self.root / self.shard_names[self.shard[index]]}:{self.names[index]}"

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def read(self, index: int) -> np.ndarray:
        """The bytes of image `index` as stored (empty where it was unreadable)."""
        size = int(self.size[index])
        if size < 0:
            return np.zeros(0, np.uint8)
        return np.frombuffer(os.pread(self._fd(int(self.shard[index])), size,
                                      int(self.offset[index])), np.uint8)

    def decode(self, index: int) -> np.ndarray | None:
        return decode_bytes(self.read(index))

    def _fd(self, shard: int) -> int:
        fd = self._open.pop(shard, None)
        if fd is None:
            if len(self._open) >= OPEN_SHARDS:
                os.close(self._open.popitem(last=False)[1])
            fd = os.open(self.root / self.shard_names[shard], os.O_RDONLY)
        self._open[shard] = fd  # the most recently used last
        return fd

    def __getstate__(self) -> dict:
        """Pickled (to a spawned worker) without this process's open files."""
        return {**self.__dict__, "_open": OrderedDict()}

    def __del__(self) -> None:
        for fd in getattr(self, "_open", {}).values():
            os.close(fd)
