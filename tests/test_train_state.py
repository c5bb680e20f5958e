"""vgg/train_state.py: the resumable state survives a real checkpoint file unchanged, and a
run resumed from it continues as the uninterrupted run."""

import pytest
import torch

import train
from tests.test_train_cli import assert_same_state, rows, tiny
from vgg.checkpoint import load_checkpoint, save_checkpoint
from vgg.engine import StepResult
from vgg.train_state import TrainState


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = TrainState()
    state.record(StepResult(6.0, 2, 3, 4, 0.5, True, True, False), 4)
    state.record(StepResult(float("nan"), 0, 0, 4, float("nan"), False, False, False), 4)
    state.record(StepResult(2.0, 1, 2, 4, float("inf"), True, False, False), 4)  # overflow
    state.capture_rng()
    save_checkpoint(state.state_dict(), tmp_path / "s.pt")
    loaded = TrainState.from_checkpoint(load_checkpoint(tmp_path / "s.pt"), "s.pt")
    assert (loaded.step, loaded.position, loaded.nonfinite_steps, loaded.overflow_steps) == \
        (3, 12, 1, 1)
    totals = loaded.epoch_totals
    assert (totals.loss_sum, totals.top1, totals.top5, totals.samples) == (8.0, 3, 5, 8)
    assert totals.errors() == {"loss": 1.0, "top1_err": 1 - 3 / 8, "top5_err": 1 - 5 / 8}
    assert torch.equal(loaded.rng[0]["torch"], state.rng[0]["torch"])
    assert loaded.end_epoch(0.4) and (loaded.epoch, loaded.position) == (1, 0)
    assert not loaded.end_epoch(0.3) and loaded.best_top1 == 0.4
    assert not loaded.end_epoch(0.4)  # equal is not better: best.pt stays the first


def test_counters_add_up_every_kind_of_step():
    """Hand-counted: two applied steps, two diverged, two fp16 overflows; the gradient norm
    averages over the applied steps only."""
    state = TrainState()
    for result in (StepResult(1.0, 1, 1, 2, 0.5, True, True, False),
                   StepResult(float("nan"), 0, 0, 2, float("nan"), False, False, False),
                   StepResult(1.0, 1, 1, 2, float("inf"), True, False, False),
                   StepResult(1.0, 1, 1, 2, 1.5, True, True, False),
                   StepResult(float("nan"), 0, 0, 2, float("nan"), False, False, False),
                   StepResult(1.0, 1, 1, 2, float("inf"), True, False, False)):
        state.record(result, 2)
    assert (state.step, state.nonfinite_steps, state.overflow_steps) == (6, 2, 2)
    totals = state.epoch_totals
    assert (totals.applied, totals.grad_norm_sum, totals.samples) == (2, 2.0, 8)
    one = TrainState()
    one.record(StepResult(3.0, 1, 1, 1, 0.1, True, True, False), 1)
    assert one.epoch_totals.errors() == {"loss": 3.0, "top1_err": 0.0, "top5_err": 0.0}


def test_checkpoints_from_before_overflow_counting_still_load():
    old = TrainState().state_dict()
    del old["overflow_steps"]  # written before 2026-11-22
    state = TrainState.from_checkpoint(old, "old.pt")
    assert state.overflow_steps == 0


def test_a_resume_across_plateau_drops_continues_the_schedule_exactly(tmp_path):
    """Issue 21.3: a run stopped before and after real plateau drops (patience 1; the
    threshold makes every epoch after the first a bad one: drops after epochs 3 and 5) and
    resumed twice ends as the uninterrupted run: every optimizer state tensor and group, the
    schedule's state, and the lr column of every metrics row. The first stop (step 5,
    epoch 3) carries a bad epoch across the resume, the second (step 7, epoch 4) a drop.
    Epochs of 2 steps (32 digits, batch 16)."""
    plateau = ("--epochs", "5", "--schedule", "plateau", "--plateau_patience", "1",
               "--plateau_threshold", "1.0", "--train_subset", "32", "--val_subset", "16")
    assert train.main(tiny(tmp_path / "full", *plateau)) == 0
    assert train.main(tiny(tmp_path / "cut", *plateau, "--max_steps", "5")) == 0
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["scheduler"]["bad_epochs"] == 1
    assert train.main(["--resume", str(tmp_path / "cut"), "--max_steps", "7"]) == 0
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["scheduler"]["drops"] == 1
    assert train.main(["--resume", str(tmp_path / "cut"), "--max_steps", "none"]) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["step"] == full["step"] == 10
    assert resumed["scheduler"] == full["scheduler"]
    assert full["scheduler"]["drops"] == 2
    assert resumed["optimizer"]["param_groups"] == full["optimizer"]["param_groups"]
    assert full["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, state in full["optimizer"]["state"].items():
        assert_same_state(state, resumed["optimizer"]["state"][key])
    assert_same_state(full["model"], resumed["model"])
    lrs = {run: [(r["step"], r["lr"]) for r in rows(tmp_path / run, "train")]
           for run in ("full", "cut")}
    assert lrs["cut"] == lrs["full"]
    assert [lr for _, lr in lrs["full"]] == pytest.approx([1e-2] * 6 + [1e-3] * 4)
    epochs = {run: [(r["epoch"], r["lr"], r["lr_divided"]) for r in rows(tmp_path / run, "epoch")]
              for run in ("full", "cut")}
    assert epochs["cut"] == epochs["full"]
