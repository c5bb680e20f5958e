"""An exponential moving average (EMA) of a network's weights (``--ema DECAY``), as timm's
ModelEma and torchvision's reference scripts keep one: not in the paper, off by default.

The average is :class:`torch.optim.swa_utils.AveragedModel` with ``use_buffers=True``, so
BatchNorm's running mean and variance are averaged like the weights (the averaged network
is evaluated with statistics of the weights it averages, not of the raw network's last
step); integer buffers (BatchNorm's ``num_batches_tracked``) are counters, copied. It is
updated once per applied optimizer step (after all micro-batches of an accumulated step;
steps whose update was skipped, non-finite or an fp16 overflow, leave it alone), from the
plain network inside DDP or torch.compile, which every process holds identically.

The decay warms up as TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does:
after ``n`` updates it is ``min(DECAY, (1 + n) / (10 + n))``. Without it, at 0.999 the
random initialisation would still weigh 0.999**422 = 66% in the average after MNIST's
first epoch of 422 steps; with it, the early average follows the weights closely and the
full decay is reached after ``(10 * DECAY - 1) / (1 - DECAY)`` updates (8,991 at 0.999).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from vgg.checkpoint import load_model_state


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of the average's update after ``updates`` earlier ones."""
    return min(decay, (1 + updates) / (10 + updates))


def ema_update(decay: float):
    """AveragedModel's ``multi_avg_fn``: float tensors move towards the network's by
    ``1 - warmed_up_decay``; integer ones (counters) take the network's value."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               updates: torch.Tensor | int) -> None:
        if averaged[0].is_floating_point():  # AveragedModel groups tensors by dtype
            torch._foreach_lerp_(averaged, current, 1 - warmed_up_decay(decay, int(updates)))
        else:
            torch._foreach_copy_(averaged, current)

    return update


class WeightAverage:
    """The EMA of ``model``'s weights and BatchNorm statistics (a copy, on its device)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"an EMA decay is in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged network, evaluable (and saved) as the plain network is."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module) -> None:
        """Average in ``model``'s current weights; the first update copies them."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's entries: ``model_ema`` (a state dict of the plain network's
        keys, loadable into it) and ``ema_updates``."""
        return {"model_ema": self.module.state_dict(), "ema_updates": self.updates}

    def load_state_dict(self, checkpoint: dict[str, Any], source: str) -> None:
        """Restore the average saved in the training checkpoint ``checkpoint`` (its entries
        checked when it was loaded: vgg.checkpoint.ema_problem)."""
        load_model_state(self.module, checkpoint["model_ema"], f"{source} (model_ema)")
        self.averaged.n_averaged.fill_(checkpoint["ema_updates"])
