"""The one owner of a run directory, in the role of timm's CheckpointSaver: claim a new one
or reopen one to resume, clean the temporaries of killed writers, save ``last.pt``, promote
``best.pt``, keep the last k epoch checkpoints and prune the older ones.

Only one live run owns a directory: it holds an OS lock on ``.lock`` (:class:`RunLock`)
from before it writes anything until it ends; a second run is refused while the owner
lives, on any host, and the lock is free the moment the owner dies."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from vgg.checkpoint import CheckpointError, checkpoint_step, save_checkpoint
from vgg.configuration import ConfigError, load_yaml
from vgg.distributed import all_gather_object
from vgg.errors import UserError


class NonFiniteWeights(RuntimeError):
    """The network diverged to inf or NaN: a failed run (exit code 1), not a user error."""


class RunDirectoryError(UserError, RuntimeError):
    """A run directory that cannot be created, is in use, or would lose newer progress."""


def checkpoint_path(resume: str | os.PathLike) -> Path:
    """``--resume`` takes a run directory (its last.pt) or a checkpoint file. A run killed
    at its first epoch's end, between writing best.pt and linking it as last.pt, has only
    best.pt: the newest checkpoint then."""
    path = Path(resume)
    if not path.is_dir():
        return path
    if not (path / "last.pt").exists() and (path / "best.pt").exists():
        return path / "best.pt"
    return path / "last.pt"


def claim_run_dir(out_dir: Path, name: str) -> Path:
    """A new directory ``out_dir/name``, or ``name-2``, ``name-3``, ... when taken: runs
    started in the same second (a sweep) never share a default-named directory, because
    ``mkdir`` claims it atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        run_dir = out_dir / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            n += 1


def make_directory(path: Path) -> bool:
    """Create ``path`` (and its parents); whether it was created, rather than there."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files (``.NAME.PID.tmp``) of writers killed mid-write. Those of
    a live process (a preempted run still saving after its SIGTERM while its requeued
    successor starts) are left alone: deleting one would fail that process's save."""
    for tmp in run_dir.glob(".*.tmp"):
        writer = tmp.name.rsplit(".", 2)[-2]
        if writer.isdigit() and not process_exists(int(writer)):
            tmp.unlink(missing_ok=True)


def link_atomically(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source`` in one rename (best.pt, epoch_N.pt):
    no second serialisation, and save_checkpoint never rewrites a file in place, so the
    link keeps its contents when ``source`` is replaced later."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class RunLock:
    """``.lock`` in a run directory, held with ``flock`` for the owner's whole life. The
    kernel drops the lock when the owner's process ends, however it ends (and on NFS the
    server drops a lost client's), so a lock left by a dead run, from any host, is free
    to take, and a pid reused by another process means nothing. The file holds ``<pid>
    <host>`` of the owner only to tell a refused second run who holds it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:  # a read-only or vanished directory
                raise RunDirectoryError(f"cannot write in the run directory "
                                        f"{self.path.parent}: {error.strerror}") from None
            try:
                _flock_soon(fd, fcntl.LOCK_EX)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise self._in_use() from None
                raise RunDirectoryError(
                    f"cannot lock {self.path} ({error.strerror}): the file system of the "
                    "run directory does not support locks; put --out_dir on one that does "
                    "(a local disk, or NFS with its lock service)") from None
            # A releasing owner deletes the file after our open: we then hold the lock of
            # a file no one else finds, and start over on the path's new one.
            if self._is_at_path(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd

    def _is_at_path(self, fd: int) -> bool:
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def _in_use(self) -> RunDirectoryError:
        return RunDirectoryError(
            f"run directory {self.path.parent} is in use by {_owner(self.path)}: two runs "
            "would mix their checkpoints and logs. Wait for it to end, or pick another --run_name "
            "(the lock ends with its process: no file needs deleting)")

    def release(self) -> None:
        """Delete the file, then let go: deleting after letting go could delete the file
        a next owner has just locked."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _flock_soon(fd: int, operation: int) -> None:
    """flock without waiting on a holder, but through a few brief retries: lock_holder's
    shared lock of a moment (``reproduce.py`` asking who runs a task) must not make a
    starting run see its directory as taken."""
    for attempt in range(5):
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as error:
            if attempt == 4 or error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            time.sleep(0.02)


def _owner(path: Path) -> str:
    try:
        pid, host = path.read_text().split()
        return f"process {pid} on {host}"
    except (OSError, ValueError):  # being written this instant
        return "another run"


def lock_holder(path: Path) -> str | None:
    """``process N on HOST`` when another live process holds the RunLock at ``path``; None
    when none does: no file, a file a dead run left (from any host: the lock ended with
    it), or this process's own lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if path.read_text().split() == [str(os.getpid()), socket.gethostname()]:
            return None
        try:
            _flock_soon(fd, fcntl.LOCK_SH)
        except OSError as error:
            return _owner(path) if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        return None
    except OSError:
        return None
    finally:
        os.close(fd)


class RunDirectory:
    """A run's directory and its checkpoints. Every process holds one; only the main
    process (``writer``) touches the disk. Use as a context manager: leaving it releases
    the lock."""

    def __init__(self, path: Path, *, writer: bool, keep_last_k: int = 0,
                 write_guard: Callable[[], Any] = nullcontext, created: bool = False):
        self.path, self.writer, self.keep_last_k = path, writer, keep_last_k
        # Made by this process: removed at the end if the run left it empty.
        self.created = created
        self.write_guard = write_guard  # e.g. StopRequest.writing: a 2nd Ctrl-C waits
        self.lock = RunLock(path)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @classmethod
    def create(cls, out_dir: str, run_name: str | None, default_name: str, *, writer: bool,
               keep_last_k: int = 0, restartable: dict[str, Any] | None = None
               ) -> RunDirectory:
        """A new run's directory: ``out_dir/run_name``, or a fresh
        ``out_dir/default_name[-N]``. Refused while another run owns it, and when it holds
        any file of an earlier run: starting over would truncate its metrics and replace its
        config and checkpoints. One exception, for a requeued ``--resume auto``: an earlier
        attempt that saved no checkpoint and whose config.yaml is ``restartable`` (this
        run's config) is started over."""
        def decide() -> RunDirectory:
            if run_name is None:
                path, created = _writable(claim_run_dir, Path(out_dir), default_name), True
            else:
                path = Path(out_dir) / run_name
                created = _writable(make_directory, path)
            run_dir = cls(path, writer=writer, keep_last_k=keep_last_k, created=created)
            with run_dir._locked():
                earlier = run_dir.run_files()
                if earlier and not (restartable is not None and not run_dir.checkpoints()
                                    and _saved_config(path) == restartable):
                    raise RunDirectoryError(
                        f"run directory {path} holds files of an earlier run "
                        f"({', '.join(p.name for p in earlier[:6])}): a new run there would "
                        f"overwrite them. Continue it with --resume {path} (or --resume with "
                        "one of its checkpoints), pick another --run_name, or move those "
                        "files away")
                run_dir.check_run_files()
                remove_stale_temporaries(path)
            return run_dir
        return cls._decided_on_main(writer, decide, keep_last_k)

    @classmethod
    def reopen(cls, checkpoint: Path, step: int, *, writer: bool, keep_last_k: int = 0
               ) -> RunDirectory:
        """The directory of ``checkpoint`` (at optimizer step ``step``), to continue the run:
        refused when it holds a newer checkpoint, whose progress resuming would overwrite."""
        def decide() -> RunDirectory:
            run_dir = cls(checkpoint.parent, writer=writer, keep_last_k=keep_last_k)
            with run_dir._locked():
                run_dir._check_newest(checkpoint, step)
                run_dir.check_run_files()
                remove_stale_temporaries(run_dir.path)
            return run_dir
        return cls._decided_on_main(writer, decide, keep_last_k)

    @classmethod
    def _decided_on_main(cls, main: bool, decide: Callable[[], RunDirectory],
                         keep_last_k: int) -> RunDirectory:
        """``decide()`` on the main process (the writer, which then holds the lock); its
        directory, or its refusal, for every process."""
        outcome = decided = None
        if main:
            try:
                decided = decide()
                outcome = ("path", str(decided.path))
            except UserError as error:
                outcome = ("error", str(error))
        kind, value = all_gather_object(outcome)[0]
        if kind == "error":
            raise RunDirectoryError(value)
        return decided or cls(Path(value), writer=False, keep_last_k=keep_last_k)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Take the lock for the block's checks; a refusal (or any failure) lets it go."""
        self.lock.acquire()
        try:
            yield
        except BaseException:
            self.lock.release()
            raise

    def _check_newest(self, checkpoint: Path, step: int) -> None:
        """Refuse to resume ``checkpoint`` when another one here holds a later step. Each is
        read only for its step; one that cannot be read is passed over with a warning when
        resuming last.pt (the run's newest save, which a damaged best.pt or epoch_*.pt must
        not block), else it blocks: it might be the newer one."""
        newer, unreadable = [], []
        for other in self.checkpoints():
            if other.resolve() == checkpoint.resolve():
                continue
            try:
                if (other_step := checkpoint_step(other)) > step:
                    newer.append((other_step, other))
            except CheckpointError as error:
                unreadable.append((other, error))
        if newer:
            newest_step, newest = max(newer)
            raise RunDirectoryError(
                f"{checkpoint} (step {step}) is older than {newest} (step {newest_step}) "
                "in the same run directory: resuming it would overwrite that progress. "
                f"Resume {newest} instead, or copy {checkpoint.name} into a new directory "
                "and resume it there to branch off")
        for other, problem in unreadable:
            if checkpoint.name != "last.pt":
                raise RunDirectoryError(
                    f"{other} cannot be read ({problem}). Every checkpoint of the run directory "
                    f"is read for its step, so that resuming {checkpoint.name} never "
                    "overwrites newer progress; move that file out of the directory to "
                    f"resume {checkpoint}")
            print(f"warning: {other} cannot be read and is passed over ({problem}); resuming "
                  f"{checkpoint}. Move it away or delete it: evaluate.py cannot use it "
                  "either", file=sys.stderr, flush=True)

    def run_files(self) -> list[Path]:
        """The files a run writes here (checkpoints, config, metrics, curves) that exist."""
        names = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "metrics.csv",
                 "curves.png")
        return [p for p in (self.path / n for n in names) if p.exists() or p.is_symlink()] \
            + sorted(self.path.glob("epoch_*.pt"))

    def check_run_files(self) -> None:
        """Refuse a config or metrics path that is a directory or other non-file: the run
        rewrites them, and would fail on them at its first save or log."""
        for path in self.run_files():
            if not path.is_file():
                raise RunDirectoryError(
                    f"{path} is not a regular file (a directory, FIFO or broken link?), and "
                    "the run writes that file: move it out of the run directory")

    def checkpoints(self) -> list[Path]:
        return [p for p in (self.path / "last.pt", self.path / "best.pt") if p.exists()] + \
            self.epoch_checkpoints()

    def epoch_checkpoints(self) -> list[Path]:
        """The kept epoch checkpoints, oldest first by the step they hold (not by name;
        an unreadable one first)."""
        return sorted(self.path.glob("epoch_*.pt"), key=_step_or_unknown)

    def save_last(self, checkpoint: dict[str, Any]) -> None:
        if self.writer:
            self._check_finite(checkpoint)
            with self.write_guard():
                save_checkpoint(checkpoint, self.last)

    def _check_finite(self, checkpoint: dict[str, Any]) -> None:
        """Never save a network holding inf or NaN (a weight, or a BatchNorm statistic that
        a diverging forward pass updated): last.pt stays the last good checkpoint."""
        if not all(bool(torch.isfinite(t).all()) for t in checkpoint.get("model", {}).values()
                   if t.is_floating_point()):
            raise NonFiniteWeights(
                f"the network's weights or statistics became inf or NaN by step "
                f"{checkpoint.get('step')}; the run stopped without saving them. Last good "
                f"checkpoint: {self.last if self.last.exists() else 'none written yet'}. "
                "Resume from it with a lower --lr or --grad_clip")

    def save_epoch(self, checkpoint: dict[str, Any], epoch: int, is_best: bool) -> None:
        """The end of epoch ``epoch``: last.pt, best.pt when ``is_best``, the last k epochs.

        A new best is written as best.pt first and only then becomes last.pt: a kill in
        between resumes from the previous last.pt, never from a last.pt whose best_top1
        claims a best.pt that was not written."""
        if not self.writer:
            return
        self._check_finite(checkpoint)
        with self.write_guard():
            save_checkpoint(checkpoint, self.path / ("best.pt" if is_best else "last.pt"))
            if is_best:
                link_atomically(self.path / "best.pt", self.last)
            if self.keep_last_k:
                link_atomically(self.last, self.path / f"epoch_{epoch:03d}.pt")
                for old in self.epoch_checkpoints()[: -self.keep_last_k]:
                    old.unlink()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.writer:
            self.lock.release()
            if self.created:
                self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """A run that ended before writing anything (missing data, unusable weights) leaves
        no empty directory behind. rmdir removes an empty directory only: a file anyone
        put there since, or a second run's lock, keeps it."""
        try:
            self.path.rmdir()
        except OSError:
            pass


def _writable(make: Callable, *args, **kwargs):
    """``make(*args)`` (a mkdir), with a clear error when --out_dir cannot hold runs."""
    try:
        return make(*args, **kwargs)
    except OSError as error:
        raise RunDirectoryError(f"cannot create a run directory under --out_dir: "
                                f"{error.strerror or error} ({error.filename})") from None


def _step_or_unknown(path: Path) -> int:
    try:
        return checkpoint_step(path)
    except CheckpointError:
        return -1


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config.yaml of a run directory; None when it is missing or unreadable."""
    try:
        return load_yaml(run_dir / "config.yaml")
    except ConfigError:
        return None
