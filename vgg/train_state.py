"""The resumable training state, defined once: the loop's counters (:class:`TrainState`)
and the objects a checkpoint restores (:class:`Resumable`), which build and read the
training checkpoint's dict in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vgg.checkpoint import CheckpointError, load_model_state
from vgg.distributed import all_gather_object
from vgg.ema import WeightAverage
from vgg.errors import short_repr
from vgg.optim import LRSchedule, set_hyperparameters
from vgg.rng import rng_state, set_rng_state


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


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
            try:
                set_rng_state(self.rng[rank])
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError,
                    AttributeError) as error:
                raise CheckpointError(
                    f"{source}: its random number generator state (rng[{rank}]) is not one "
                    f"this toolkit saves ({type(error).__name__}); the checkpoint is damaged "
                    f"or was edited. Start a new run from its weights with --init_from "
                    f"{source}") from None

    def state_dict(self) -> dict[str, Any]:
        totals = self.epoch_totals
        return {"epoch": self.epoch, "step": self.step, "position": self.position,
                "best_top1": self.best_top1, "nonfinite_steps": self.nonfinite_steps,
                "overflow_steps": self.overflow_steps,
                "epoch_totals": [totals.loss_sum, totals.top1, totals.top5, totals.samples],
                "rng": self.rng, "wandb_run_id": self.wandb_run_id, "health": self.health}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str) -> TrainState:
        """The state saved in the training checkpoint ``checkpoint`` (read from ``source``),
        each field checked: a damaged or crafted one is a CheckpointError naming it, not a
        crash (or a wrong run) later."""
        state = dict(checkpoint)
        state.setdefault("overflow_steps", 0)  # absent before 2026-11-22
        state.setdefault("health", {})  # absent before the health monitor
        for name, ok, expected in (
                *((n, _count, "a whole number from 0 to 2**63") for n in (
                    "epoch", "step", "position", "nonfinite_steps", "overflow_steps")),
                ("best_top1", lambda v: _real(v) and -1 <= v <= 1, "an accuracy in [-1, 1]"),
                ("epoch_totals", lambda v: isinstance(v, (list, tuple)) and len(v) == 4
                 and all(_real(x) and math.isfinite(x) for x in v), "4 finite numbers"),
                ("rng", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
                 "a list of RNG states"),
                ("wandb_run_id", lambda v: v is None or isinstance(v, str), "text or null"),
                ("health", lambda v: isinstance(v, dict), "a mapping of counters")):
            if name not in state or not ok(state[name]):
                got = short_repr(state[name]) if name in state else "nothing"
                raise CheckpointError(
                    f"{source}: its training state field {name!r} should be {expected}, got "
                    f"{got}; the checkpoint is damaged or was edited. Start a new run from "
                    f"its weights with --init_from {source}")
        loss_sum, top1, top5, samples = state["epoch_totals"]
        return cls(state["epoch"], state["step"], state["position"], state["best_top1"],
                   state["nonfinite_steps"], state["overflow_steps"],
                   Tally(loss_sum, top1, top5, samples), state["rng"], state["wandb_run_id"],
                   dict(state["health"]))


@dataclass
class Resumable:
    """The objects whose state a training checkpoint holds, beside :class:`TrainState`:
    the plain network (unwrapped), the optimizer, the schedule, the fp16 GradScaler, and
    the descriptions written with them (``model_args`` rebuilds the network, ``config`` is
    the run's, ``preprocessing`` says what input it expects, ``provenance`` which code,
    libraries, device and data this session trains with: vgg/provenance.py), and with
    ``--ema`` the average of the weights (vgg/ema.py)."""

    model: nn.Module
    model_args: dict[str, Any]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    provenance: dict[str, Any] | None = None
    ema: WeightAverage | None = None

    def checkpoint(self, state: TrainState) -> dict[str, Any]:
        """The checkpoint of ``state`` (a collective: every process calls it)."""
        state.capture_rng()
        return {"model": self.model.state_dict(), "model_args": self.model_args,
                "config": self.config, "preprocessing": self.preprocessing,
                "provenance": self.provenance, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "copied_from_A": list(getattr(self.model, "copied_from_A", ())),
                "pretrained_modules": list(getattr(self.model, "pretrained_modules", ())),
                **(self.ema.state_dict() if self.ema is not None else {}),
                **state.state_dict()}

    def restore(self, checkpoint: dict[str, Any], source: str, *, rank: int, world: int,
                hyperparameters: dict[str, float]) -> TrainState:
        """Load ``checkpoint`` (of the same network, checked by the caller) into these
        objects and this process's RNGs; return its :class:`TrainState`.
        ``hyperparameters`` (lr, weight_decay, momentum) are the config's: they win over
        the saved ones. An average the checkpoint lacks (--ema turned on when resuming)
        starts from the restored weights."""
        load_model_state(self.model, checkpoint.get("model"), source)
        if self.ema is not None and "model_ema" in checkpoint:
            self.ema.load_state_dict(checkpoint, source)
        elif self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.schedule.load_state_dict(checkpoint["scheduler"])
            if self.scaler is not None and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
            raise CheckpointError(f"{source}: its optimizer or schedule state cannot be "
                                  f"loaded ({type(error).__name__} {short_repr(str(error))}): "
                                  "the checkpoint is damaged or of another version. Start a "
                                  f"new run from its weights with --init_from {source}") from None
        state = TrainState.from_checkpoint(checkpoint, source)
        set_hyperparameters(self.optimizer, **hyperparameters)
        self.schedule.update(state.step)
        state.restore_rng(rank, world, source)
        return state
