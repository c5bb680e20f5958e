"""The one owner of a run directory, in the role of timm's CheckpointSaver: claim a new one
or reopen one to resume, clean the temporaries of killed writers, save ``last.pt``, promote
``best.pt``, keep the last k epoch checkpoints and prune the older ones.

Only one live run owns a directory: a lock file (``.lock``, created with ``O_EXCL``, holding
the owner's pid and host) is taken before anything is written, refused while its owner is
alive, taken over from a dead one, and removed when the run ends."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from vgg.checkpoint import checkpoint_step, save_checkpoint
from vgg.distributed import all_gather_object
from vgg.errors import UserError


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
    for n in itertools.count(1):
        run_dir = out_dir / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir


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
    """``.lock`` in a run directory: ``<pid> <host>`` of the run that owns it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.owner = f"{os.getpid()} {socket.gethostname()}"

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock is removed, then the claim is tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._remove_if_stale()
                continue
            except OSError as error:  # a read-only or vanished directory
                raise RunDirectoryError(f"cannot write in the run directory "
                                        f"{self.path.parent}: {error.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            return
        raise RunDirectoryError(f"could not lock {self.path.parent}: another run keeps "
                                "claiming it")

    def _remove_if_stale(self) -> None:
        """Remove the lock of a dead process on this host; refuse a live (or unknown) one."""
        try:
            pid, host = self.path.read_text().split()
            alive = host != socket.gethostname() or process_exists(int(pid))
        except FileNotFoundError:
            return  # released meanwhile
        except ValueError:  # being written this instant, or damaged
            pid, host, alive = "?", "?", True
        if alive:
            raise RunDirectoryError(
                f"run directory {self.path.parent} is in use by process {pid} on {host}: two "
                "runs would mix their checkpoints and logs. Wait for it to end, or pick "
                f"another --run_name (if that run is gone, delete {self.path})")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except FileNotFoundError:
            pass


def _decided_on_main(main: bool, decide: Callable[[], Path]) -> Path:
    """Run ``decide`` on the main process and give its path, or its refusal, to all."""
    outcome = None
    if main:
        try:
            outcome = ("path", str(decide()))
        except UserError as error:
            outcome = ("error", str(error))
    kind, value = all_gather_object(outcome)[0]
    if kind == "error":
        raise RunDirectoryError(value)
    return Path(value)


class RunDirectory:
    """A run's directory and its checkpoints. Every process holds one; only the main
    process (``writer``) touches the disk. Use as a context manager: leaving it releases
    the lock."""

    def __init__(self, path: Path, *, writer: bool, keep_last_k: int = 0,
                 write_guard: Callable[[], Any] = nullcontext):
        self.path, self.writer, self.keep_last_k = path, writer, keep_last_k
        self.write_guard = write_guard  # e.g. StopRequest.writing: a 2nd Ctrl-C waits
        self.lock = RunLock(path)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @classmethod
    def create(cls, out_dir: str, run_name: str | None, default_name: str, *, writer: bool,
               keep_last_k: int = 0) -> RunDirectory:
        """A new run's directory: ``out_dir/run_name`` (refused when it holds a run or
        another live run owns it), or a fresh ``out_dir/default_name[-N]``."""
        def decide() -> Path:
            if run_name is None:
                path = _writable(claim_run_dir, Path(out_dir), default_name)
            else:
                path = Path(out_dir) / run_name
                _writable(path.mkdir, parents=True, exist_ok=True)
            run_dir = cls(path, writer=writer, keep_last_k=keep_last_k)
            run_dir.lock.acquire()
            if (path / "last.pt").exists() or (path / "best.pt").exists():
                run_dir.lock.release()
                raise RunDirectoryError(f"run directory {path} already holds a run; "
                                        f"continue it with --resume {path}, or pick another "
                                        "--run_name")
            remove_stale_temporaries(path)
            return path
        return cls(_decided_on_main(writer, decide), writer=writer, keep_last_k=keep_last_k)

    @classmethod
    def reopen(cls, checkpoint: Path, step: int, *, writer: bool, keep_last_k: int = 0
               ) -> RunDirectory:
        """The directory of ``checkpoint`` (at optimizer step ``step``), to continue the run:
        refused when it holds a newer checkpoint, whose progress resuming would overwrite."""
        def decide() -> Path:
            run_dir = cls(checkpoint.parent, writer=writer, keep_last_k=keep_last_k)
            run_dir.lock.acquire()
            newer = [(s, p) for p in run_dir.checkpoints()
                     if (s := checkpoint_step(p)) > step and p.resolve() != checkpoint.resolve()]
            if newer:
                run_dir.lock.release()
                newest_step, newest = max(newer)
                raise RunDirectoryError(
                    f"{checkpoint} (step {step}) is older than {newest} (step {newest_step}) "
                    "in the same run directory: resuming it would overwrite that progress. "
                    f"Resume {newest} instead, or copy {checkpoint.name} into a new directory "
                    "and resume it there to branch off")
            remove_stale_temporaries(run_dir.path)
            return run_dir.path
        return cls(_decided_on_main(writer, decide), writer=writer, keep_last_k=keep_last_k)

    def checkpoints(self) -> list[Path]:
        return [p for p in (self.path / "last.pt", self.path / "best.pt") if p.exists()] + \
            self.epoch_checkpoints()

    def epoch_checkpoints(self) -> list[Path]:
        """The kept epoch checkpoints, oldest first by the step they hold (not by name)."""
        return sorted(self.path.glob("epoch_*.pt"), key=checkpoint_step)

    def save_last(self, checkpoint: dict[str, Any]) -> None:
        if self.writer:
            with self.write_guard():
                save_checkpoint(checkpoint, self.last)

    def save_epoch(self, checkpoint: dict[str, Any], epoch: int, is_best: bool) -> None:
        """The end of epoch ``epoch``: last.pt, best.pt when ``is_best``, the last k epochs.

        A new best is written as best.pt first and only then becomes last.pt: a kill in
        between resumes from the previous last.pt, never from a last.pt whose best_top1
        claims a best.pt that was not written."""
        if not self.writer:
            return
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


def _writable(make: Callable, *args, **kwargs):
    """``make(*args)`` (a mkdir), with a clear error when --out_dir cannot hold runs."""
    try:
        return make(*args, **kwargs)
    except OSError as error:
        raise RunDirectoryError(f"cannot create a run directory under --out_dir: "
                                f"{error.strerror or error} ({error.filename})") from None
