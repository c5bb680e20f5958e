"""FileList: the paths of many image files as one bytes buffer and two integer arrays, not
as Python strings.

ImageNet's 1.28M training paths as a list of str take ~130 MiB in each process, and a
forked DataLoader worker, touching every string's reference count over an epoch, ends up
with a private copy of all of them. numpy arrays are never written once made, so a forked
worker shares their pages with its parent; a path is decoded from the buffer when it is
asked for.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np


def path_prefix(folder: str | os.PathLike | None) -> str:
    """What joins ``folder`` to a name as pathlib joins them (``folder`` in its normal form
    and a separator, "" for "." and for None), by string concatenation: a Path per file
    costs microseconds, minutes over ImageNet's train/ at every start."""
    return "" if folder is None else str(Path(folder) / "_")[:-1]


class FileList(Sequence[str]):
    """File paths: ``prefix`` (a folder) joined to each name, the names stored as their
    file-system bytes (``os.fsencode``: names that are not UTF-8 survive) in one uint8
    buffer, name i being ``buffer[starts[i]:ends[i]]``."""

    def __init__(self, prefix: str, buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.prefix, self.buffer, self.starts, self.ends = prefix, buffer, starts, ends

    @classmethod
    def of(cls, names: Iterable[str], folder: str | os.PathLike | None = None) -> FileList:
        """``names`` (relative paths, or whole ones without ``folder``) under ``folder``."""
        encoded = [os.fsencode(name) for name in names]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(name) for name in encoded], out=offsets[1:])
        buffer = np.frombuffer(b"".join(encoded), np.uint8)
        return cls(path_prefix(folder), buffer, offsets[:-1], offsets[1:])

    @classmethod
    def from_offsets(cls, buffer: np.ndarray, offsets: np.ndarray) -> FileList:
        """Names ``buffer[offsets[i]:offsets[i + 1]]``, with no folder (views, no copies)."""
        return cls("", buffer, offsets[:-1], offsets[1:])

    def under(self, folder: str | os.PathLike) -> FileList:
        """These names under ``folder``, sharing this list's arrays."""
        return FileList(path_prefix(folder), self.buffer, self.starts, self.ends)

    def subset(self, indices: np.ndarray) -> FileList:
        """The paths at ``indices``, sharing this list's buffer."""
        return FileList(self.prefix, self.buffer, self.starts[indices], self.ends[indices])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int | slice) -> str | FileList:  # type: ignore[override]
        if isinstance(index, slice):
            return FileList(self.prefix, self.buffer, self.starts[index], self.ends[index])
        i = range(len(self))[operator.index(index)]  # IndexError past the end, as lists do
        return self.prefix + os.fsdecode(self.buffer[self.starts[i]:self.ends[i]].tobytes())

    def __iter__(self) -> Iterator[str]:
        data = self.buffer.data  # a memoryview of the bytes, no copy
        for start, end in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            yield self.prefix + os.fsdecode(bytes(data[start:end]))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same paths in the same order (a list of str too)."""
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays: equal lists, no hash

    def __repr__(self) -> str:
        return f"FileList({len(self)} files under {self.prefix or './'!r})"
