"""Replacing a file atomically, after timm's checkpoint saver: every file the tools write
(checkpoints, config.yaml, the metrics log on resume, results) is either the old one or the
new one, whenever the process is killed; a write that fails (a full disk) is one clear
error that says nothing was replaced."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vgg.errors import UserError


class WriteError(UserError, OSError):
    """A file that could not be written (a full disk, a read-only folder); the file it
    would have replaced is untouched."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


def reason(error: OSError) -> str:
    """Why a write failed, in words a user can act on."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    return error.strerror or str(error)


@contextmanager
def replace_atomically(path: str | os.PathLike, mode: str = "w", **open_args: Any
                       ) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing. When the block ends without an
    error, the file is flushed to disk and renamed over ``path``; otherwise it is removed
    and ``path`` is untouched. A failed write (OSError) is raised as a :class:`WriteError`
    naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(f"could not write {path}: {reason(error)}; nothing was replaced "
                         "there", error.errno) from None
    finally:
        tmp.unlink(missing_ok=True)


class RecordingWriter:
    """A file's ``write``, remembering the OSError it raised: torch's zip writer turns that
    error into a RuntimeError without its errno ("unexpected pos ..."), so a full disk
    would not be recognised as one."""

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before the work, not after it, when ``folder`` (or the nearest existing
    folder above it) has less than ``needed`` bytes free for ``what``."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise WriteError(f"{folder} has {free / 2**20:.1f} MiB free, but {what} needs about "
                         f"{needed / 2**20:.1f} MiB: free some space or write elsewhere",
                         errno.ENOSPC)


# Files an output flag never replaces, whatever the command: weights and checkpoints, and a
# run directory's own records (vgg/run_dir.py, vgg/run_log.py, vgg/plot.py).
WEIGHT_SUFFIXES = (".pt", ".pth", ".pt2", ".onnx", ".ckpt", ".safetensors")
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", ".lock")
# A previous result is recognised by its content, read up to this size.
MAX_RECOGNISED_BYTES = 256 * 2**20


def check_output(path: Path, previous: Callable[[bytes], bool], flag: str, what: str) -> None:
    """Refuse before the work, not after it, an output ``path`` that cannot be written (a
    folder, under a file, in a read-only or pseudo file system) or whose file would be lost:
    weights, a run directory's own files, or any existing file whose first bytes
    ``previous`` does not recognise as an earlier ``what`` of the same command."""
    for candidate in (path, path.resolve()):
        if candidate.suffix.lower() in WEIGHT_SUFFIXES or candidate.name in RUN_FILES:
            raise WriteError(f"{flag} {path}: {candidate.name} is a checkpoint, weights or a run "
                             f"directory's own file, which {flag} never replaces; name a new "
                             "file")
    if path.is_dir():
        raise WriteError(f"{flag} {path} is a folder; name a file (in it, say)")
    if path.exists():
        try:
            with open(path, "rb") as f:
                recognised = path.is_file() and path.stat().st_size <= MAX_RECOGNISED_BYTES \
                    and previous(f.read(MAX_RECOGNISED_BYTES))
        except OSError:
            recognised = False
        if not recognised:
            raise WriteError(f"{flag} {path}: the file exists and is not an earlier {what}, so "
                             "writing would destroy it; name a new file or move it away")
    check_folder(path.parent, f"{flag} {path}")


def check_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and check that a file can be written in it; the error
    starts with ``what`` (the flag and its value)."""
    above = next(p for p in (folder, *folder.parents) if p.exists())
    if not above.is_dir():
        raise WriteError(f"{what}: {above} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}.tmp"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise WriteError(f"{what}: cannot write in {folder} ({reason(error)})",
                         error.errno) from None
