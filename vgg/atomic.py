"""Replacing a file atomically, after timm's checkpoint saver: every file the trainer
rewrites (checkpoints, config.yaml, the metrics log on resume) is either the old one or the
new one, whenever the process is killed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def replace_atomically(path: str | os.PathLike, mode: str = "w", **open_args: Any
                       ) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing. When the block ends without an
    error, the file is flushed to disk and renamed over ``path``; otherwise it is removed
    and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
