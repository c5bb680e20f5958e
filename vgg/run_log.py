"""The run's record: one :meth:`RunLog.log` writes a metrics row to the metrics file
(JSON lines or CSV), to Weights & Biases, and (epoch rows) as the console line and the
redrawn curves.png."""

from __future__ import annotations

import csv
import io
import json
import netrc
import os
from pathlib import Path
from typing import Any

from vgg.atomic import replace_atomically

METRIC_FIELDS = ("kind", "epoch", "step", "loss", "top1_err", "top5_err", "lr", "grad_norm",
                 "images_per_s", "val_loss", "val_top1_err", "val_top5_err", "val_n",
                 "nonfinite_steps", "overflow_steps", "time")


class MetricsLog:
    """One row per logging interval (``kind=train``) and per epoch (``kind=epoch``), as
    JSON lines or CSV. Opening it with ``resume_from=(epochs_done, step)`` of the
    checkpoint being resumed drops, in one atomic rewrite, the rows written after that
    checkpoint: the resumed run writes them again."""

    def __init__(self, path: str | Path, fmt: str = "jsonl",
                 resume_from: tuple[int, int] | None = None):
        self.path, self.fmt = Path(path), fmt
        if resume_from is not None and self.path.exists():
            epochs_done, step = resume_from
            kept = [row for row in self.read(self.path)
                    if (int(row["epoch"]) <= epochs_done if row["kind"] == "epoch"
                        else int(row["step"]) <= step)]
            with replace_atomically(self.path, newline="") as f:
                self._write(f, kept, header=True)

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """The rows of a metrics file. A last line without its newline is the torn write of
        a killed process (power loss): it is dropped, the resumed run writes it again."""
        path = Path(path)
        text = path.read_text()
        text = text[: text.rfind("\n") + 1]
        if path.suffix == ".csv":
            return [{k: v for k, v in row.items() if v != ""}
                    for row in csv.DictReader(io.StringIO(text, newline=""))]
        return [json.loads(line) for line in text.splitlines() if line.strip()]

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
    """A W&B run (continuing ``run_id`` when resuming), or None when disabled. wandb is
    imported only here: it is never needed to train."""
    mode = wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(project=project, entity=entity, name=name, id=run_id,
                      resume="allow" if run_id else None, dir=str(run_dir), config=config,
                      mode=mode)


def wandb_name(kind: str, key: str) -> str:
    """A metrics row's field as W&B names it: ``train/loss`` for a logging interval's,
    ``train/epoch_loss`` and ``val/top1_err`` for an epoch's."""
    if kind == "train":
        return f"train/{key}"
    if key in ("epoch", "lr"):
        return key
    return f"val/{key[4:]}" if key.startswith("val_") else f"train/epoch_{key}"


def console_line(row: dict[str, Any], epochs: int) -> str:
    """An epoch row as the one line the console shows."""
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['loss']:.4f} top-1 err "
            f"{row['top1_err']:.2%} top-5 err {row['top5_err']:.2%} | val loss "
            f"{row['val_loss']:.4f} top-1 err {row['val_top1_err']:.2%} top-5 err "
            f"{row['val_top5_err']:.2%} ({row['val_n']} images) | lr {row['lr']:.1e}"
            f"{' (divided)' if row['lr_divided'] else ''} | {row['epoch_time']:.0f}s"
            f"{' | best' if row['best'] else ''}")


class RunLog:
    """Where a run's rows go. On the main process: the metrics file, W&B (when enabled) and
    the console; elsewhere nowhere. Opened with ``resume_from`` (see :class:`MetricsLog`)
    when continuing a run, else any rows of an earlier attempt that wrote no checkpoint
    are dropped."""

    NOT_LOGGED = ("kind", "step", "time", "lr_divided", "best")

    def __init__(self, run_dir: Path, *, main: bool, fmt: str, epochs: int,
                 resume_from: tuple[int, int] | None, wandb_settings: dict[str, Any],
                 run_id: str | None, config: dict[str, Any]):
        self.main, self.epochs, self.run_dir = main, epochs, run_dir
        self.metrics = self.wandb = None
        if main:
            self.metrics = MetricsLog(run_dir / f"metrics.{fmt}", fmt,
                                      resume_from=resume_from or (0, 0))
            self.wandb = init_wandb(**wandb_settings, run_dir=run_dir, name=run_dir.name,
                                    run_id=run_id, config=config)

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, row: dict[str, Any]) -> None:
        """One metrics row (``kind`` train or epoch) to every destination."""
        if not self.main:
            return
        self.metrics.write(row)
        if self.wandb is not None:
            self.wandb.log({wandb_name(row["kind"], k): v for k, v in row.items()
                            if k not in self.NOT_LOGGED and v is not None}, step=row["step"])
        if row["kind"] == "epoch":
            self.print(console_line(row, self.epochs), flush=True)
            from vgg.plot import write_run_curves  # vgg.plot reads metrics through this module

            write_run_curves(self.run_dir)  # curves.png, redrawn from the metrics file

    def print(self, *args, **kwargs) -> None:
        """A console message, from the main process only."""
        if self.main:
            print(*args, **kwargs)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
