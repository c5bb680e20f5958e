"""The run's record: one :meth:`RunLog.log` writes a metrics row to the metrics file
(JSON lines or CSV), to Weights & Biases, to TensorBoard (``--tensorboard true``) and to the
console (epoch rows always, interval rows as plain lines where no progress bar is drawn),
and redraws curves.png."""

from __future__ import annotations

import csv
import io
import json
import netrc
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from vgg.atomic import replace_atomically
from vgg.errors import UserError, short_repr
from vgg.metrics import reported_topk
from vgg.progress import plain_progress

METRIC_FIELDS = ("kind", "epoch", "step", "loss", "top1_err", "top5_err", "lr", "lr_divided",
                 "grad_norm",
                 "images_per_s", "data_wait", "max_memory_gib", "val_loss", "val_top1_err",
                 "val_top5_err", "val_n", "nonfinite_steps", "overflow_steps", "time",
                 *(f"{measure}_stage{i}" for measure in ("grad_norm", "dead_relu")
                   for i in range(1, 6)), "message",
                 # --ema: the averaged weights' validation, and which figure chose best.pt
                 "val_ema_loss", "val_ema_top1_err", "val_ema_top5_err", "best_by")


class MetricsError(UserError, ValueError):
    """A metrics file that cannot be read back as rows."""


def _whole(value: Any) -> bool:
    """An int, or its text in a CSV file."""
    try:
        return not isinstance(value, bool) and int(value) == float(value)
    except (TypeError, ValueError, OverflowError):
        return False


def _row(line: str | dict) -> dict[str, Any] | None:
    """A metrics line (JSON text, or a CSV row's dict) as a row, None if it is none."""
    if isinstance(line, str):
        try:
            line = json.loads(line)
        except ValueError:  # JSONDecodeError, or a number too long to convert
            return None
    if not (isinstance(line, dict) and isinstance(line.get("kind"), str)
            and _whole(line.get("step"))
            and (line["kind"] != "epoch" or _whole(line.get("epoch")))):
        return None
    return line


class MetricsLog:
    """One row per logging interval (``kind=train``) and per epoch (``kind=epoch``), as
    JSON lines or CSV. Opening it with ``resume_from=(epochs_done, step)`` of the
    checkpoint being resumed drops, in one atomic rewrite, the rows written after that
    checkpoint: the resumed run writes them again. :attr:`logged_through` is the last step
    the file held before that: every row up to it went to W&B too."""

    def __init__(self, path: str | Path, fmt: str = "jsonl",
                 resume_from: tuple[int, int] | None = None):
        self.path, self.fmt = Path(path), fmt
        self.logged_through = 0
        if resume_from is not None and self.path.exists():
            epochs_done, step = resume_from
            written = self.read(self.path)
            self.logged_through = max((int(row["step"]) for row in written), default=0)
            kept = [row for row in written
                    if (int(row["epoch"]) <= epochs_done if row["kind"] == "epoch"
                        else int(row["step"]) <= step)]
            with replace_atomically(self.path, newline="") as f:
                self._write(f, kept, header=True)

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """The rows of a metrics file. A last line without its newline is the torn write of
        a killed process (power loss): it is dropped, the resumed run writes it again. Any
        other line that is not a row (``kind``, whole ``step``; ``epoch`` too in an epoch
        row) is a :class:`MetricsError` naming it: a resume rewrites the file from its rows."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise MetricsError(f"cannot read the metrics file {path} "
                               f"({getattr(error, 'strerror', None) or error}): a run's "
                               "metrics file is a text file of rows; move it aside") from None
        text = text[: text.rfind("\n") + 1]
        lines: Sequence[dict[str, str] | str]  # CSV rows, or JSON lines
        if path.suffix == ".csv":
            lines = [{k: v for k, v in row.items() if v not in ("", None)}
                     for row in csv.DictReader(io.StringIO(text, newline=""))]
            first = 2  # after the header
        else:
            lines, first = text.splitlines(), 1
        rows = []
        for number, line in enumerate(lines, first):
            if isinstance(line, str) and not line.strip():
                continue
            row = _row(line)
            if row is None:
                raise MetricsError(
                    f"line {number} of {path} is not a metrics row ({short_repr(line)}): "
                    "each row has a kind, a whole step and (epoch rows) epoch. Was it edited? "
                    "Restore or delete that line")
            rows.append(row)
        return rows

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            self._write(f, [row], header=new)

    def _write(self, f, rows: list[dict[str, Any]], header: bool) -> None:
        if self.fmt == "jsonl":
            f.writelines(json.dumps(row) + "\n" for row in rows)
            return
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows(rows)


def wandb_mode(requested: str) -> str:
    """``auto``: WANDB_MODE if set, else online when an API key is configured (env or
    ~/.netrc from ``wandb login``), else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def init_wandb(mode: str, *, project: str, entity: str | None, run_dir: Path, name: str,
               run_id: str | None, config: dict[str, Any]):
    """A W&B run (continuing ``run_id`` when resuming), or None when disabled. W&B never
    ends a run: when it cannot start online (no network on a compute node, a bad key) the
    run logs to W&B offline (``wandb sync`` uploads it later), failing that without W&B,
    after one warning. wandb is imported only here: it is never needed to train."""
    requested, mode = mode, wandb_mode(mode)
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:  # an optional logger (the GPU machines' stack has none)
        warn(f"W&B was asked for (--wandb {requested}) but wandb is not installed; training "
             "without W&B (the metrics file is complete). `pip install wandb` to log to it, "
             "or --wandb disabled to silence this")
        return None

    failures = []
    for attempt in dict.fromkeys((mode, "offline")):
        try:
            run = wandb.init(project=project, entity=entity, name=name, id=run_id,
                             resume="allow" if run_id else None, dir=str(run_dir),
                             # A user's --wandb or WANDB_MODE, unchecked: wandb.init checks
                             # it (a bad one fails this attempt, as any other failure).
                             config=config, mode=attempt)  # type: ignore[arg-type]
        except Exception as error:  # any failure of an optional logger: the run goes on
            failures.append(f"{attempt}: {(str(error) or repr(error)).splitlines()[0]}")
            continue
        if failures:
            warn(f"W&B could not start ({failures[0]}); logging to W&B offline in "
                 f"{run_dir / 'wandb'} instead (upload it later with `wandb sync`)")
        return run
    warn(f"W&B could not start ({'; '.join(failures)}); training without W&B (the metrics "
         "file is complete)")
    return None


class TensorBoardMissing(UserError, ImportError):
    """--tensorboard true without the tensorboard package."""


def summary_writer_class():
    """torch's TensorBoard SummaryWriter, imported only here: tensorboard is an optional
    package (the GPU machines' stack has none), needed only with --tensorboard true. A run
    that asks for it without the package is refused before it starts, not trained unlogged."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing(
            "--tensorboard true logs through torch.utils.tensorboard, which needs the "
            "tensorboard package, and it is not installed here: pip install tensorboard "
            "(requirements.txt pins the version), or train without it (--tensorboard false; "
            "metrics.jsonl has every row, and W&B the same)") from None
    return SummaryWriter


def open_tensorboard(run_dir: Path, first_step: int):
    """A TensorBoard writer into ``<run_dir>/tensorboard`` whose events start at
    ``first_step``: each session writes a new events file, and its ``purge_step`` tells
    TensorBoard to drop the events of earlier sessions from ``first_step`` on (those a
    killed run logged after its last checkpoint, which the resumed run logs again)."""
    return summary_writer_class()(log_dir=str(run_dir / "tensorboard"), purge_step=first_step)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def wandb_name(kind: str, key: str) -> str:
    """A metrics row's field as W&B and TensorBoard name it: ``train/loss`` for a logging
    interval's, ``train/epoch_loss`` and ``val/top1_err`` for an epoch's."""
    if kind == "train":
        return f"train/{key}"
    if key in ("epoch", "lr"):
        return key
    return f"val/{key[4:]}" if key.startswith("val_") else f"train/epoch_{key}"


def duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` before anything has been measured)."""
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


def console_line(row: dict[str, Any], epochs: int, eta: float | None) -> str:
    """An epoch row as the one line the console shows (top-5 where the row has it)."""
    def top5(key: str) -> str:
        return f" top-5 err {row[key]:.2%}" if key in row else ""

    return (f"epoch {row['epoch']}/{epochs}  train loss {row['loss']:.4f} top-1 err "
            f"{row['top1_err']:.2%}{top5('top5_err')} | val loss {row['val_loss']:.4f} "
            f"top-1 err {row['val_top1_err']:.2%}{top5('val_top5_err')} "
            f"({row['val_n']} images)"
            + (f" | EMA val loss {row['val_ema_loss']:.4f} top-1 err "
               f"{row['val_ema_top1_err']:.2%}{top5('val_ema_top5_err')}"
               if "val_ema_top1_err" in row else "")
            + f" | lr {row['lr']:.1e}"
            f"{' (divided)' if row['lr_divided'] else ''} | {row['epoch_time']:.0f}s, "
            f"{row['images_per_s']:.0f} img/s | eta {duration(eta)}"
            f"{' | best' if row['best'] else ''}"
            f"{' (EMA)' if row['best'] and row.get('best_by') == 'ema' else ''}")


def progress_line(row: dict[str, Any], *, total_steps: int, steps_per_epoch: int,
                  epochs: int, eta: float | None) -> str:
    """A logging interval's row as a plain console line, for logs without a terminal."""
    memory = row.get("max_memory_gib")
    return (f"step {row['step']}/{total_steps} (epoch {row['step'] / steps_per_epoch:.2f}/"
            f"{epochs}) | loss {row['loss']:.4f} top-1 err {row['top1_err']:.2%} | lr "
            f"{row['lr']:.2e} | {row['images_per_s']:.0f} img/s, data wait "
            f"{row['data_wait']:.0%}" + (f" | peak mem {memory:.2f} GiB" if memory else "")
            + f" | eta {duration(eta)}")


class Pace:
    """The console's speed figures: images/s over the training steps of the current epoch,
    and the whole run's ETA from the wall time per step this process has taken so far
    (validation and checkpoints included, once there were some)."""

    def __init__(self, total_steps: int, first_step: int,
                 clock: Callable[[], float] = time.monotonic):
        self.total_steps, self.first_step, self.clock = total_steps, first_step, clock
        self.started = clock()
        self.images, self.seconds = 0, 0.0

    def add(self, images: int, seconds: float) -> None:
        """One training step of ``images`` (all processes) that took ``seconds``."""
        self.images += images
        self.seconds += seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def eta(self, step: int) -> float | None:
        """Seconds until ``total_steps``, at this process's mean time per step so far."""
        done = step - self.first_step
        if done <= 0:
            return None
        return (self.clock() - self.started) / done * max(self.total_steps - step, 0)

    def new_epoch(self) -> None:
        self.images, self.seconds = 0, 0.0


class RunLog:
    """Where a run's rows go. On the main process: the metrics file, W&B (when enabled),
    TensorBoard (when asked for) and the console; elsewhere nowhere. Opened with
    ``resume_from`` (see :class:`MetricsLog`) when continuing a run, else any rows of an
    earlier attempt that wrote no checkpoint are dropped. A resumed run sends W&B only the
    rows after the last step logged before: W&B takes steps in increasing order only, and
    has the earlier ones already. TensorBoard drops what came after the checkpoint
    (:func:`open_tensorboard`) and gets those rows again, but not the rows up to the
    checkpoint's step, which it holds already.

    ``steps`` is (steps per epoch, steps the run will take); ``progress`` is --progress:
    with :attr:`bar` false, each interval row is also printed as a plain line."""

    NOT_LOGGED = ("kind", "step", "time", "lr_divided", "best", "best_by")

    def __init__(self, run_dir: Path, *, main: bool, fmt: str, epochs: int,
                 steps: tuple[int, int], progress: bool,
                 resume_from: tuple[int, int] | None, wandb_settings: dict[str, Any],
                 run_id: str | None, config: dict[str, Any], num_classes: int,
                 tensorboard: bool = False):
        self.main, self.epochs, self.run_dir = main, epochs, run_dir
        # Top-5 of 5 classes or fewer is always 0%: neither logged nor shown.
        self.unreported = () if 5 in reported_topk(num_classes) else (
            "top5_err", "val_top5_err", "val_ema_top5_err")
        (self.steps_per_epoch, self.total_steps), self.bar = steps, not plain_progress(progress)
        self.pace = Pace(self.total_steps, first_step=resume_from[1] if resume_from else 0)
        self.metrics = self.wandb = self.tensorboard = None
        self.wandb_sent_through = 0
        # Steps before the checkpoint resumed from are in TensorBoard already.
        self.tensorboard_from = (resume_from[1] if resume_from else 0) + 1
        if main:
            self.metrics = MetricsLog(run_dir / f"metrics.{fmt}", fmt,
                                      resume_from=resume_from or (0, 0))
            if resume_from is not None:
                self.wandb_sent_through = self.metrics.logged_through
            self.wandb = init_wandb(**wandb_settings, run_dir=run_dir, name=run_dir.name,
                                    run_id=run_id, config=config)
            if tensorboard:
                self.tensorboard = open_tensorboard(run_dir, self.tensorboard_from)

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, row: dict[str, Any]) -> None:
        """One metrics row (``kind`` train or epoch) to every destination."""
        row = {k: v for k, v in row.items() if k not in self.unreported}
        if row["kind"] == "epoch":  # the epoch's training speed, as the console showed it
            row = row | {"images_per_s": self.pace.images_per_s}
            self.pace.new_epoch()
        if not self.main:
            return
        assert self.metrics is not None  # the main process writes a metrics file
        self.metrics.write(row)
        scalars = {wandb_name(row["kind"], k): v for k, v in row.items()
                   if k not in self.NOT_LOGGED and v is not None}
        if self.wandb is not None and row["step"] > self.wandb_sent_through:
            self.wandb.log(scalars, step=row["step"])
        if self.tensorboard is not None and row["step"] >= self.tensorboard_from:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, row["step"])
            self.tensorboard.flush()  # on disk before any checkpoint after this row
        eta = self.pace.eta(row["step"])
        if row["kind"] == "epoch":
            self.print(console_line(row, self.epochs, eta), flush=True)
            from vgg.plot import write_run_curves  # vgg.plot reads metrics through this module

            write_run_curves(self.run_dir)  # curves.png, redrawn from the metrics file
        elif not self.bar:
            self.print(progress_line(row, total_steps=self.total_steps,
                                     steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                                     eta=eta), flush=True)

    def health(self, message: str, *, epoch: int, step: int) -> None:
        """The health monitor's warning (vgg.health): on the console, as a ``kind=health``
        row of the metrics file, as a W&B alert and ``health/not_learning`` = 1, and in
        TensorBoard as that scalar and the warning's text."""
        if not self.main:
            return
        assert self.metrics is not None  # the main process writes a metrics file
        warn(message)
        self.metrics.write({"kind": "health", "epoch": epoch, "step": step,
                            "message": message, "time": time.time()})
        if self.wandb is not None and step > self.wandb_sent_through:
            self.wandb.log({"health/not_learning": 1}, step=step)
            self.wandb.summary["health_warning"] = message
            try:  # an alert needs a logged-in online run; offline it is not essential
                self.wandb.alert(title="the network is not learning", text=message)
            except Exception as error:  # any failure of an optional logger: the run goes on
                warn(f"W&B alert not sent ({error})")
        if self.tensorboard is not None and step >= self.tensorboard_from:
            self.tensorboard.add_scalar("health/not_learning", 1, step)
            self.tensorboard.add_text("health/warning", message, step)
            self.tensorboard.flush()

    def print(self, *args, **kwargs) -> None:
        """A console message, from the main process only."""
        if self.main:
            print(*args, **kwargs)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
