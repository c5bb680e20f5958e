"""--tensorboard true: train.py's rows read back from the event files TensorBoard itself
reads, after a run and after resumes, and the refusal when the package is missing."""

import importlib.util
import os
import subprocess
import sys

import pytest

import train
from tests.test_train_cli import ROOT, killed_after_logging, rows, tiny

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed")


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's TensorBoard folder, as TensorBoard shows them: all
    its events files read in order, with the events each session's purge_step drops."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@needs_tensorboard
def test_tensorboard_has_every_row_once_across_resumes(tmp_path):
    """As W&B's test: a kill after steps 4 and 5 were logged but before their checkpoint;
    the resumed run logs them again, and TensorBoard shows each step once."""
    run_dir = tmp_path / "tb"
    killed_after_logging(run_dir, "--tensorboard", "true")
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 3
    logged = scalars(run_dir)
    for tag, series in logged.items():
        steps = [step for step, _ in series]
        assert steps == sorted(set(steps)), tag  # unique and increasing
    # every interval row: loss, errors, lr and gradient norm, at the metrics file's values
    train_rows = rows(run_dir, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    for tag, field in (("train/loss", "loss"), ("train/top1_err", "top1_err"),
                       ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                       ("train/images_per_s", "images_per_s")):
        assert [step for step, _ in logged[tag]] == list(range(1, 13)), tag
        assert [v for _, v in logged[tag]] == pytest.approx([r[field] for r in train_rows],
                                                            rel=1e-6), tag
    # every epoch row (2 epochs of 6 steps): the curves' data
    epoch_rows = rows(run_dir, "epoch")
    for tag, field in (("val/top1_err", "val_top1_err"), ("val/loss", "val_loss"),
                       ("train/epoch_loss", "loss"), ("lr", "lr"), ("epoch", "epoch")):
        assert logged[tag] == [(r["step"], pytest.approx(r[field], rel=1e-6))
                               for r in epoch_rows], tag
    assert [step for step, _ in logged["val/top1_err"]] == [6, 12]


@needs_tensorboard
def test_the_health_warning_goes_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vgg.run_log import RunLog

    log = RunLog(tmp_path, main=True, fmt="jsonl", epochs=1, steps=(10, 10), progress=False,
                 resume_from=None, wandb_settings={"mode": "disabled", "project": "vgg",
                                                   "entity": None},
                 run_id=None, config={}, num_classes=10, tensorboard=True)
    log.health("the loss is still ln(10)", epoch=1, step=7)
    log.close()
    assert scalars(tmp_path)["health/not_learning"] == [(7, 1.0)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    [text] = events.Tensors("health/warning/text_summary")
    assert text.step == 7 and text.tensor_proto.string_val == [b"the loss is still ln(10)"]


@needs_tensorboard
def test_without_the_flag_there_is_no_tensorboard_folder(tmp_path):
    run_dir = tmp_path / "plain"
    assert train.main(tiny(run_dir, "--max_steps", "1")) == 0
    assert not (run_dir / "tensorboard").exists()


def test_tensorboard_without_the_package_is_refused_before_the_run_starts(tmp_path):
    """The GPU machines' stack has no tensorboard: asking for it is a one-paragraph error
    naming the fix, and nothing is trained or written. The package's absence is made by
    Python's own way of marking a module unavailable (a None entry in sys.modules)."""
    run_dir = tmp_path / "runs" / "no-tb"
    program = ("import sys; sys.modules['tensorboard'] = None; import train; "
               "sys.exit(train.main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", program,
                          *tiny(run_dir, "--tensorboard", "true")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "pip install tensorboard" in run.stderr and "--tensorboard false" in run.stderr
    assert not run_dir.exists()
