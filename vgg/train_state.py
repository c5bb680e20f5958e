"""The resumable training state, defined once: the loop's counters (:class:`TrainState`)
and the objects a checkpoint restores (:class:`Resumable`), which build and read the
training checkpoint's dict in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vgg.checkpoint import CheckpointError, load_model_state
from vgg.distributed import all_gather_object
from vgg.optim import LRSchedule, set_hyperparameters
from vgg.rng import rng_state, set_rng_state


@dataclass
class Tally:
    """Sums over the steps of an epoch or of a logging interval; the gradient norm over the
    applied steps only (an fp16 overflow's norm is infinite)."""

    loss_sum: float = 0.0
    top1: float = 0
    top5: float = 0
    samples: int = 0
    grad_norm_sum: float = 0.0
    applied: int = 0

    def add(self, result) -> None:
        """Count a finite step's :class:`vgg.engine.StepResult`."""
        self.loss_sum += result.loss_sum
        self.top1 += result.top1
        self.top5 += result.top5
        self.samples += result.samples
        if result.applied:
            self.grad_norm_sum += result.grad_norm
            self.applied += 1

    def errors(self) -> dict[str, float]:
        """Mean loss and top-1/top-5 error of the counted samples."""
        n = max(self.samples, 1)
        return {"loss": self.loss_sum / n, "top1_err": 1 - self.top1 / n,
                "top5_err": 1 - self.top5 / n}


@dataclass
class TrainState:
    """Where a run stands; everything here is saved and restored exactly, so a resumed run
    continues bit for bit."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    position: int = 0  # samples of the current epoch already seen, per process
    best_top1: float = -1.0  # best validation top-1 accuracy so far
    nonfinite_steps: int = 0  # steps that diverged (update not applied)
    overflow_steps: int = 0  # fp16 steps the GradScaler skipped
    epoch_totals: Tally = field(default_factory=Tally)  # this epoch's finite steps so far
    rng: list[dict[str, Any]] = field(default_factory=list)  # every process's RNG states
    wandb_run_id: str | None = None
    health: dict[str, Any] = field(default_factory=dict)  # vgg.health.HealthMonitor's counters

    def record(self, result, window_samples: int) -> None:
        """Count one optimizer step; ``window_samples`` are this process's."""
        self.step += 1
        self.position += window_samples
        if not result.finite:
            self.nonfinite_steps += 1
            return
        self.overflow_steps += not result.applied
        self.epoch_totals.add(result)

    def end_epoch(self, val_top1: float) -> bool:
        """Close the epoch after its validation; return whether it is the best so far."""
        is_best = val_top1 > self.best_top1
        self.best_top1 = max(self.best_top1, val_top1)
        self.epoch, self.position, self.epoch_totals = self.epoch + 1, 0, Tally()
        return is_best

    def capture_rng(self) -> None:
        """Gather every process's RNG state (a collective: every process calls it)."""
        self.rng = all_gather_object(rng_state())

    def restore_rng(self, rank: int, world: int, source: str) -> None:
        if len(self.rng) != world and self.position:
            # position counts samples per process: another process count would repeat or
            # skip part of the epoch's data.
            raise CheckpointError(
                f"{source} stopped mid-epoch with {len(self.rng)} process(es); resume it "
                f"with {len(self.rng)} (another count works from an epoch boundary)")
        if len(self.rng) == world:
            set_rng_state(self.rng[rank])

    def state_dict(self) -> dict[str, Any]:
        totals = self.epoch_totals
        return {"epoch": self.epoch, "step": self.step, "position": self.position,
                "best_top1": self.best_top1, "nonfinite_steps": self.nonfinite_steps,
                "overflow_steps": self.overflow_steps,
                "epoch_totals": [totals.loss_sum, totals.top1, totals.top5, totals.samples],
                "rng": self.rng, "wandb_run_id": self.wandb_run_id, "health": self.health}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loss_sum, top1, top5, samples = state["epoch_totals"]
        self.epoch, self.step, self.position = state["epoch"], state["step"], state["position"]
        self.best_top1, self.nonfinite_steps = state["best_top1"], state["nonfinite_steps"]
        self.overflow_steps = state.get("overflow_steps", 0)  # absent before 2026-11-22
        self.epoch_totals = Tally(loss_sum, top1, top5, samples)
        self.rng, self.wandb_run_id = state["rng"], state["wandb_run_id"]
        self.health = dict(state.get("health", {}))  # absent before the health monitor


@dataclass
class Resumable:
    """The objects whose state a training checkpoint holds, beside :class:`TrainState`:
    the plain network (unwrapped), the optimizer, the schedule, the fp16 GradScaler, and
    the descriptions written with them (``model_args`` rebuilds the network, ``config`` is
    the run's, ``preprocessing`` says what input it expects)."""

    model: nn.Module
    model_args: dict[str, Any]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None
    config: dict[str, Any]
    preprocessing: dict[str, Any]

    def checkpoint(self, state: TrainState) -> dict[str, Any]:
        """The checkpoint of ``state`` (a collective: every process calls it)."""
        state.capture_rng()
        return {"model": self.model.state_dict(), "model_args": self.model_args,
                "config": self.config, "preprocessing": self.preprocessing,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "copied_from_A": list(getattr(self.model, "copied_from_A", ())),
                "pretrained_modules": list(getattr(self.model, "pretrained_modules", ())),
                **state.state_dict()}

    def restore(self, checkpoint: dict[str, Any], source: str, state: TrainState, *,
                rank: int, world: int, hyperparameters: dict[str, float]) -> None:
        """Load ``checkpoint`` (of the same network, checked by the caller) into these
        objects, ``state`` and this process's RNGs. ``hyperparameters`` (lr, weight_decay,
        momentum) are the config's: they win over the saved ones."""
        load_model_state(self.model, checkpoint["model"], source)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.schedule.load_state_dict(checkpoint["scheduler"])
            if self.scaler is not None and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
            state.load_state_dict(checkpoint)
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{source}: its optimizer/schedule state does not fit "
                                  f"this config ({error})") from None
        set_hyperparameters(self.optimizer, **hyperparameters)
        self.schedule.update(state.step)
        state.restore_rng(rank, world, source)
