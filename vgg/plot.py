"""Pictures of runs and evaluations: training curves drawn from metrics files alone, and
confusion matrices.

    python -m vgg.plot runs/D [runs/E ...] [--out comparison.png]

One run draws ``<run>/curves.png``; several runs share the axes, one colour each (a
comparison). matplotlib is imported only inside the drawing functions, through its
object-oriented ``Figure`` (rendered by Agg): no pyplot, no display, no global backend
switch, so training and evaluation never need a screen and a notebook keeps its own backend.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vgg import configuration
from vgg.atomic import replace_atomically
from vgg.errors import UserError, run_cli
from vgg.run_log import MetricsLog

METRICS_FILES = ("metrics.jsonl", "metrics.csv")
CURVES_FILE = "curves.png"
# Up to this many classes the matrix itself is legible; beyond, the most-confused pairs.
MAX_MATRIX_CLASSES = 30
PAIRS_CHART = 20
# (title, metrics field of the training rows, of the validation rows, of the validation of
# the weights' average that --ema keeps)
CURVE_PANELS = (("loss", "loss", "val_loss", "val_ema_loss"),
                ("top-1 error", "top1_err", "val_top1_err", "val_ema_top1_err"),
                ("top-5 error", "top5_err", "val_top5_err", "val_ema_top5_err"))


class PlotError(UserError):
    """A run or matrix that cannot be drawn: the CLI prints it as a one-paragraph error."""


# ------------------------------------------------------------------------ training curves

def metrics_file(run: str | Path) -> Path:
    """The metrics file of a run directory, or ``run`` itself when it is a metrics file."""
    run = Path(run)
    if run.is_file():
        return run
    for name in METRICS_FILES:
        if (run / name).is_file():
            return run / name
    raise PlotError(f"{run} holds no {' or '.join(METRICS_FILES)}: pass a run directory "
                    "written by train.py, or its metrics file")


def epoch_series(run: str | Path) -> dict[str, np.ndarray]:
    """The per-epoch rows of a run as float arrays, one per metrics field, keyed also by
    ``epoch``; a value the row lacks is NaN. A resumed run's repeated epoch keeps its last
    row. ``lr`` is the learning rate the epoch trained with: that of its last interval row
    (the lr of the steps just taken), the epoch row's where the epoch logged no interval."""
    rows = MetricsLog.read(metrics_file(run))
    epoch_rows = {int(row["epoch"]): row for row in rows if row.get("kind") == "epoch"}
    if not epoch_rows:
        raise PlotError(f"{metrics_file(run)} has no finished epoch yet: curves start at the "
                        "end of the first epoch")
    trained_lr = {int(row["epoch"]): row["lr"] for row in rows
                  if row.get("kind") == "train" and row.get("lr") not in (None, "")}
    epochs = sorted(epoch_rows)
    fields = {"epoch"} | {field for _, *pair in CURVE_PANELS for field in pair}
    series = {field: np.array([_number(epoch_rows[e].get(field)) for e in epochs])
              for field in fields}
    series["lr"] = np.array([_number(trained_lr.get(e, epoch_rows[e].get("lr")))
                             for e in epochs])
    series["lr_divided"] = np.array([str(epoch_rows[e].get("lr_divided")) in ("True", "true")
                                     for e in epochs], dtype=float)  # JSON true, CSV "True"
    return series


def _number(value: Any) -> float:
    return math.nan if value is None or value == "" else float(value)


def lr_drops(epochs: np.ndarray, divided: np.ndarray) -> list[float]:
    """The ends of the epochs after which the schedule divided the lr: the trainer's own
    ``lr_divided`` verdict of each epoch row (plateau and step drops; a cosine schedule's
    tail, which also falls by large factors per epoch, never drops)."""
    return [float(e) for e, flag in zip(epochs, divided, strict=True) if flag == 1]


def run_names(runs: Sequence[str | Path]) -> list[str]:
    """Short legend names: the run directory's name, the full path where two would clash."""
    paths = [Path(run) for run in runs]
    names = [(p.parent.name if p.is_file() else p.name) or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(path)
            for name, path in zip(names, paths, strict=True)]


def curves_figure(runs: Sequence[str | Path]):
    """A Figure with four panels sharing the epoch axis: loss, top-1 error and top-5 error
    (training solid, validation dashed, and a run with --ema its average's validation
    dotted) and the learning rate (log scale); one colour per
    run, the lr drops as dotted vertical lines in the run's colour on every panel. Every
    curve is a Line2D whose label names it; drop markers' labels start with ``_``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not runs:
        raise PlotError("no run to draw: pass at least one run directory")
    series = [epoch_series(run) for run in runs]  # every file read before any drawing
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for name, data, colour in zip(run_names(runs), series, colours, strict=True):
        epochs = data["epoch"]
        for ax, (_, train_field, val_field, ema_field) in zip(axes, CURVE_PANELS,
                                                              strict=False):
            ax.plot(epochs, data[train_field], "o-", color=colour, ms=3, label=f"{name} train")
            ax.plot(epochs, data[val_field], "s--", color=colour, ms=3,
                    label=f"{name} validation")
            if not np.isnan(data[ema_field]).all():
                ax.plot(epochs, data[ema_field], "^:", color=colour, ms=3,
                        label=f"{name} validation, EMA")
        # epoch e trained over (e - 1, e]: a step from the epoch's start to its end
        axes[3].plot(np.r_[epochs[0] - 1, epochs], np.r_[data["lr"][:1], data["lr"]],
                     color=colour, drawstyle="steps-pre", label=f"{name} lr")
        for drop in lr_drops(epochs, data["lr_divided"]):
            for ax in axes:
                ax.axvline(drop, color=colour, linestyle=":", linewidth=1, label="_lr drop")
    for ax, (title, *_) in zip(axes, CURVE_PANELS, strict=False):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[3].set_title("learning rate of each epoch (dotted: lr divided)")
    axes[3].set_yscale("log")
    axes[3].grid(alpha=0.3, which="both")
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # shared by all four
    axes[0].legend(fontsize="small")
    return figure


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG atomically: a reader (a browser refreshing curves.png
    while the run goes on) sees the old picture or the new one, never half a file. The
    figure's title, if any, is also the PNG's ``Title`` text: an image viewer or a script
    reads what the picture shows without looking at it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = figure.get_suptitle()
    with replace_atomically(path, "wb") as f:
        figure.savefig(f, format="png", dpi=dpi, metadata={"Title": title} if title else None)
    return path


def plot_curves(runs: Sequence[str | Path], path: str | Path):
    """Draw :func:`curves_figure` of ``runs`` into the PNG ``path``; return the Figure."""
    figure = curves_figure(runs)
    save_figure(figure, path)
    return figure


def write_run_curves(run_dir: str | Path) -> Path:
    """``<run_dir>/curves.png`` from the run's own metrics file: the trainer calls this at
    every epoch end, after writing the epoch's metrics row."""
    run_dir = Path(run_dir)
    plot_curves([run_dir], run_dir / CURVES_FILE)
    return run_dir / CURVES_FILE


# ------------------------------------------------------------------------ confusion matrix

def _matrix(confusion) -> np.ndarray:
    """A square count matrix (rows: true class, columns: predicted) from a tensor, array or
    nested list."""
    matrix = np.asarray(confusion.tolist() if hasattr(confusion, "tolist") else confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise PlotError(f"a confusion matrix is square, this one has shape {matrix.shape}")
    return matrix


def _names(class_names: Sequence[str] | None, count: int) -> list[str]:
    if not class_names:
        return [str(i) for i in range(count)]
    if len(class_names) != count:
        raise PlotError(f"{len(class_names)} class names for a {count}-class confusion matrix")
    return [str(name) for name in class_names]


def most_confused_pairs(confusion, class_names: Sequence[str] | None = None, k: int = 5
                        ) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal counts as ``(true class, predicted class, count)``,
    largest first (ties in row-major order); pairs never confused are left out."""
    matrix = _matrix(confusion)
    names = _names(class_names, len(matrix))
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, matrix.shape) for i in order]
    return [(names[t], names[p], int(off_diagonal[t, p])) for t, p in pairs
            if off_diagonal[t, p] > 0]


def confusion_figure(confusion, class_names: Sequence[str] | None = None,
                     title: str | None = None):
    """Up to ``MAX_MATRIX_CLASSES`` classes: the matrix, coloured by the share of each true
    class (row) predicted as each class, counts written in the cells when they fit. More
    classes: a bar chart of the ``PAIRS_CHART`` most-confused (true -> predicted) pairs.
    ``title`` (what was evaluated, how: vgg.report.confusion_title) heads the figure."""
    figure = _confusion_drawing(_matrix(confusion), class_names)
    if title:
        figure.suptitle(title)
    return figure


def _confusion_drawing(matrix: np.ndarray, class_names: Sequence[str] | None):
    from matplotlib.figure import Figure

    names = _names(class_names, len(matrix))
    if len(matrix) > MAX_MATRIX_CLASSES:
        pairs = most_confused_pairs(matrix, names, PAIRS_CHART)
        figure = Figure(figsize=(9, 0.3 * len(pairs) + 1.5), layout="constrained")
        ax = figure.subplots()
        ax.barh([f"{true} -> {predicted}" for true, predicted, _ in pairs],
                [count for *_, count in pairs], color="C3")
        ax.invert_yaxis()
        ax.set_xlabel("images")
        ax.set_title(f"the {len(pairs)} most-confused pairs of {len(matrix)} classes "
                     "(true -> predicted)")
        return figure
    side = max(4.0, 0.45 * len(matrix) + 2.5)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    ax = figure.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=90)
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(matrix) <= 15:
        for (t, p), count in np.ndenumerate(matrix):
            ax.text(p, t, str(count), ha="center", va="center", fontsize="small",
                    color="white" if shares[t, p] > 0.5 else "black")
    return figure


def plot_confusion(confusion, class_names: Sequence[str] | None, path: str | Path,
                   title: str | None = None):
    """Draw :func:`confusion_figure` into the PNG ``path``; return the Figure."""
    figure = confusion_figure(confusion, class_names, title)
    save_figure(figure, path)
    return figure


# ------------------------------------------------------------------------ command line

@dataclass
class PlotConfig:
    """The options of ``python -m vgg.plot`` (vgg/configuration.py: flags and YAML)."""
    # --- what to plot ---
    runs: list[str] = configuration.positional(
        "RUN", [], help="run directory (holding metrics.jsonl or metrics.csv) or a metrics file")
    # --- output ---
    out: str | None = field(default=None, metadata={
        "metavar": "FILE.png", "help": "PNG to write; none = <RUN>/curves.png for one run, "
                                       "comparison.png for several"})


def draw(argv: list[str] | None) -> int:
    cfg = configuration.command_config(PlotConfig, argv, __doc__, "python -m vgg.plot")
    if cfg is None:  # --print_config
        return 0
    out = Path(cfg.out) if cfg.out else (Path("comparison.png") if len(cfg.runs) > 1
                                         else metrics_file(cfg.runs[0]).parent / CURVES_FILE)
    plot_curves(cfg.runs, out)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: draw(argv), "vgg.plot")


if __name__ == "__main__":
    sys.exit(main())
