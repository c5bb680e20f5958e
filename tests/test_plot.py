"""Training curves and confusion pictures, read back from the PNGs they write."""

import numpy as np
import pytest
from PIL import Image

from vgg.plot import (
    PAIRS_CHART,
    PlotError,
    confusion_figure,
    curves_figure,
    lr_drops,
    main,
    most_confused_pairs,
    plot_confusion,
    plot_curves,
    write_run_curves,
)
from vgg.run_log import MetricsLog

# Four epochs of a plateau schedule that divides the lr by 10 after epoch 2: the lr each
# epoch trained with.
EPOCH_LRS = [0.01, 0.01, 0.001, 0.001]
DIVIDED_AFTER = 2


def write_run(run_dir, fmt="jsonl", shift=0.0, ema=False):
    """A run directory with a metrics file in the trainer's own format: interval rows and
    epoch rows, as train.py writes them (with ``ema``, as --ema writes them)."""
    run_dir.mkdir(parents=True)
    log = MetricsLog(run_dir / f"metrics.{fmt}", fmt)
    for epoch, lr in enumerate(EPOCH_LRS, start=1):
        log.write({"kind": "train", "epoch": epoch, "step": 10 * epoch - 5, "loss": 2.0,
                   "top1_err": 0.5, "lr": lr, "images_per_s": 100.0, "time": 0.0})
        log.write({"kind": "epoch", "epoch": epoch, "step": 10 * epoch,
                   "loss": 2.0 / epoch + shift, "top1_err": 0.8 / epoch, "top5_err": 0.4 / epoch,
                   "lr": lr, "lr_divided": epoch == DIVIDED_AFTER,
                   "val_loss": 2.2 / epoch + shift, "val_top1_err": 0.9 / epoch,
                   "val_top5_err": 0.5 / epoch, "val_n": 100, "time": 0.0,
                   **({"val_ema_loss": 2.1 / epoch, "val_ema_top1_err": 0.7 / epoch,
                       "val_ema_top5_err": 0.3 / epoch, "best_by": "ema"} if ema else {})})
    return run_dir


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def colour_pixels(pixels, hex_colour, tolerance=12):
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) <= tolerance).sum())


def curves(figure):
    return [line for ax in figure.axes for line in ax.get_lines()
            if not line.get_label().startswith("_")]


def drop_markers(figure):
    return [line for ax in figure.axes for line in ax.get_lines()
            if line.get_label() == "_lr drop"]


BLUE, ORANGE = "#1f77b4", "#ff7f0e"  # matplotlib's first two cycle colours, C0 and C1


def test_lr_drops_are_the_schedules_divisions_not_a_cosine_tail(tmp_path):
    epochs = np.array([1, 2, 3, 4, 5])
    assert lr_drops(epochs, np.array([1.0, 0.0, 1.0, 0.0, 0.0])) == [1.0, 3.0]
    # A cosine schedule's last epochs fall by 3x or more each, and are no drops.
    run = tmp_path / "cosine"
    run.mkdir()
    log = MetricsLog(run / "metrics.jsonl", "jsonl")
    for epoch, lr in enumerate([0.05, 0.03, 0.01, 1e-3, 1e-5], start=1):
        log.write({"kind": "epoch", "epoch": epoch, "step": epoch, "loss": 1.0, "lr": lr,
                   "lr_divided": False, "val_loss": 1.0, "time": 0.0})
    assert drop_markers(curves_figure([run])) == []


def test_one_run_draws_seven_curves_and_marks_the_lr_drop(tmp_path):
    run = write_run(tmp_path / "run")
    figure = plot_curves([run], tmp_path / "curves.png")
    lines = curves(figure)
    # loss, top-1, top-5: training and validation each; and the learning rate
    assert sorted(line.get_label() for line in lines) == sorted(
        ["run train"] * 3 + ["run validation"] * 3 + ["run lr"])
    val_top1 = [line for line in figure.axes[1].get_lines()
                if line.get_label() == "run validation"][0]
    np.testing.assert_allclose(val_top1.get_ydata(), [0.9 / e for e in range(1, 5)])
    assert figure.axes[3].get_yscale() == "log"
    lr = [line for line in lines if line.get_label() == "run lr"][0]
    # each epoch's lr spans (e - 1, e]: drawn from epoch 0
    assert list(lr.get_xdata()) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(lr.get_ydata(), [0.01, 0.01, 0.01, 0.001, 0.001])
    markers = drop_markers(figure)
    assert len(markers) == 4 and all(list(m.get_xdata()) == [2.0, 2.0] for m in markers)

    pixels = read_png(tmp_path / "curves.png")
    assert pixels.shape == (750, 1100, 3)  # figsize (11, 7.5) at 100 dpi
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank
    assert colour_pixels(pixels, BLUE) > 200 and colour_pixels(pixels, ORANGE) == 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_run_with_ema_also_draws_its_averages_validation(tmp_path, fmt):
    """Three more curves, dotted, in the run's colour, with the average's figures: from
    JSON lines and from CSV. (Mutation: drawing val_top1_err as the EMA's fails it.)"""
    run = write_run(tmp_path / "run", fmt=fmt, ema=True)
    figure = plot_curves([run], tmp_path / "curves.png")
    ema = {ax.get_title(): line for ax in figure.axes for line in ax.get_lines()
           if line.get_label() == "run validation, EMA"}
    assert sorted(ema) == ["loss", "top-1 error", "top-5 error"]
    for title, per_epoch in (("loss", 2.1), ("top-1 error", 0.7), ("top-5 error", 0.3)):
        np.testing.assert_allclose(ema[title].get_ydata(), [per_epoch / e for e in range(1, 5)])
        assert ema[title].get_linestyle() == ":" and ema[title].get_color() == "C0"
    assert len(curves(figure)) == 10


def test_comparison_draws_each_run_in_its_own_colour(tmp_path):
    first = write_run(tmp_path / "a" / "run")
    second = write_run(tmp_path / "b" / "run", fmt="csv", shift=0.3)
    out = tmp_path / "comparison.png"
    assert main([str(first), str(second), "--out", str(out)]) == 0
    figure = plot_curves([first, second], tmp_path / "again.png")
    lines = curves(figure)
    assert len(lines) == 14
    # the same directory name twice: the legend names them by path
    assert {line.get_label() for line in lines} == {
        f"{run} {what}" for run in (first, second) for what in ("train", "validation", "lr")}
    assert {line.get_color() for line in lines} == {"C0", "C1"}
    loss_lines = [line for line in figure.axes[0].get_lines() if "train" in line.get_label()]
    np.testing.assert_allclose(loss_lines[1].get_ydata() - loss_lines[0].get_ydata(), 0.3)

    pixels = read_png(out)
    assert pixels.shape == (750, 1100, 3)
    assert colour_pixels(pixels, BLUE) > 200 and colour_pixels(pixels, ORANGE) > 200


def test_the_lr_an_epoch_trained_with_comes_from_its_interval_rows(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run / "metrics.jsonl")
    # The epoch rows here record the lr set for the next epoch (0.001 after epoch 2); the
    # interval rows, the lr the steps were taken with. Epoch 3 logged no interval.
    for epoch, (trained, next_lr) in enumerate([(0.01, 0.01), (0.01, 0.001),
                                                (None, 0.001)], start=1):
        if trained is not None:
            log.write({"kind": "train", "epoch": epoch, "step": epoch, "lr": trained})
        log.write({"kind": "epoch", "epoch": epoch, "step": epoch, "loss": 1.0, "lr": next_lr,
                   "lr_divided": epoch == 2})
    figure = plot_curves([run], tmp_path / "curves.png")
    lr = [line for line in curves(figure) if line.get_label() == "run lr"][0]
    np.testing.assert_allclose(lr.get_ydata(), [0.01, 0.01, 0.01, 0.001])
    assert {tuple(m.get_xdata()) for m in drop_markers(figure)} == {(2.0, 2.0)}


def test_run_curves_are_rewritten_atomically_at_each_epoch(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "curves.png").write_bytes(b"an older picture")
    path = write_run_curves(run)
    assert path == run / "curves.png"
    assert Image.open(path).size == (1100, 750)
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_bad_runs_are_user_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "holds no metrics.jsonl or metrics.csv" in capsys.readouterr().err
    run = tmp_path / "fresh"
    run.mkdir()
    MetricsLog(run / "metrics.jsonl").write({"kind": "train", "epoch": 1, "step": 5,
                                             "loss": 2.0})
    assert main([str(run)]) == 2
    assert "no finished epoch yet" in capsys.readouterr().err
    assert not (run / "curves.png").exists()


CONFUSION = np.array([[50, 3, 0, 1],
                      [7, 40, 2, 0],
                      [0, 9, 30, 2],
                      [1, 0, 7, 45]])
NAMES = ["cat", "dog", "fox", "owl"]


def test_most_confused_pairs_by_hand():
    assert most_confused_pairs(CONFUSION, NAMES) == [
        ("fox", "dog", 9), ("dog", "cat", 7), ("owl", "fox", 7), ("cat", "dog", 3),
        ("dog", "fox", 2)]
    assert most_confused_pairs(CONFUSION, None, k=2) == [("2", "1", 9), ("1", "0", 7)]
    # pairs never confused are left out, however large k
    assert len(most_confused_pairs(np.diag([5, 5, 5]), None, k=5)) == 0
    assert most_confused_pairs(CONFUSION, NAMES, k=100)[-1] == ("owl", "cat", 1)


def test_confusion_matrix_has_the_class_names_on_its_axes(tmp_path):
    figure = plot_confusion(CONFUSION, NAMES, tmp_path / "confusion.png")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    shares = ax.get_images()[0].get_array()
    np.testing.assert_allclose(shares[2], [0, 9 / 41, 30 / 41, 2 / 41])
    assert "45" in [text.get_text() for text in ax.texts]
    pixels = read_png(tmp_path / "confusion.png")
    assert pixels.shape[0] >= 400 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_confusion_title_heads_the_figure_and_is_the_png_title(tmp_path):
    title = "run/best.pt | test split | dense | Q=32 | top-1 error 12.50%"
    figure = plot_confusion(CONFUSION, NAMES, tmp_path / "titled.png", title=title)
    assert figure.get_suptitle() == title
    assert Image.open(tmp_path / "titled.png").text["Title"] == title
    assert confusion_figure(CONFUSION, NAMES).get_suptitle() == ""  # untitled by default


def test_many_classes_draw_the_most_confused_pairs(tmp_path):
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 20, size=(40, 40)) + np.diag(np.full(40, 500))
    names = [f"class{i}" for i in range(40)]
    figure = plot_confusion(confusion, names, tmp_path / "confusion.png")
    ax = figure.axes[0]
    bars = [t.get_text() for t in ax.get_yticklabels()]
    expected = most_confused_pairs(confusion, names, PAIRS_CHART)
    assert bars == [f"{t} -> {p}" for t, p, _ in expected]
    assert [patch.get_width() for patch in ax.patches] == [c for *_, c in expected]
    assert read_png(tmp_path / "confusion.png").std() > 10


def test_confusion_input_is_checked():
    with pytest.raises(PlotError, match="square"):
        most_confused_pairs(np.zeros((2, 3)))
    with pytest.raises(PlotError, match="3 class names for a 4-class"):
        most_confused_pairs(CONFUSION, NAMES[:3])
