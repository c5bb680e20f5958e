"""vgg/train_state.py: the resumable state survives a real checkpoint file unchanged."""

import torch

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


def test_checkpoints_from_before_overflow_counting_still_load():
    old = TrainState().state_dict()
    del old["overflow_steps"]  # written before 2026-11-22
    state = TrainState.from_checkpoint(old, "old.pt")
    assert state.overflow_steps == 0
