"""What the optimizer updates and how fast: parameter groups (weight decay, the layers
copied from net A), SGD or AdamW, and the learning-rate schedule of every step."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from vgg.configuration import ConfigError


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True,
                 copied_from_A: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Parameters split by (weight decay?, learning rate fixed?). The parameters named in
    ``copied_from_A`` keep their initial learning rate (``fixed_lr``): one reading of Sec.
    3.1, which the trainer applies only with --from_A_fixed_lr (by default copied layers
    follow the schedule). With ``decay_norm_and_bias=False`` biases and norm weights (1-d
    tensors) get no decay."""
    copied = set(copied_from_A)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = decay_norm_and_bias or param.ndim > 1
        groups.setdefault((decay, name in copied), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "fixed_lr": fixed, "name": f"{'decay' if decay else 'no_decay'}"
                                          f"{'_from_A' if fixed else ''}"}
            for (decay, fixed), params in sorted(groups.items())]


def build_optimizer(model: nn.Module, name: str = "sgd", *, lr: float, momentum: float = 0.9,
                    nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                    weight_decay: float = 5e-4, decay_norm_and_bias: bool = True,
                    copied_from_A: Sequence[str] = (), pretrained: Sequence[nn.Parameter] = (),
                    pretrained_lr_multiplier: float = 1.0) -> torch.optim.Optimizer:
    """SGD (the paper's) or AdamW over :func:`param_groups`; fused kernels on CUDA. The
    ``pretrained`` parameters of a fine-tuned network train at ``pretrained_lr_multiplier``
    times the rate of the new ones."""
    groups = param_groups(model, weight_decay, decay_norm_and_bias, copied_from_A)
    if pretrained and pretrained_lr_multiplier != 1.0:
        groups = scale_pretrained_lr(groups, pretrained, pretrained_lr_multiplier, lr)
    fused = next(model.parameters()).device.type == "cuda" or None
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                               fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adamw")


def scale_pretrained_lr(groups: Sequence[dict[str, Any]], pretrained: Collection[nn.Parameter],
                        multiplier: float, lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups (as :func:`param_groups` makes them) with each
    group split into its pretrained and its new parameters: the pretrained part trains at
    ``multiplier * lr`` (``lr_scale`` records the multiplier, for the schedule and resume),
    the new part at ``lr``, first (the schedule reports the first group's rate). Empty parts
    are dropped."""
    if multiplier <= 0:
        raise ConfigError(f"--pretrained_lr_multiplier must be positive, got {multiplier} "
                          "(use --freeze to hold layers still)")
    pretrained_ids = {id(p) for p in pretrained}
    split = []
    for group in groups:
        for is_pretrained, scale in ((False, 1.0), (True, multiplier)):
            params = [p for p in group["params"] if (id(p) in pretrained_ids) == is_pretrained]
            if params:
                name = group.get("name", "group") + ("_pretrained" if is_pretrained else "")
                split.append({**group, "params": params, "lr": lr * scale,
                              "lr_scale": scale, "name": name})
    return split


class LRSchedule:
    """The learning rate of every step, counted in optimizer steps.

    - ``plateau`` (the paper's): divide by ``1/factor`` when validation top-1 has not
      improved by ``threshold`` for more than ``patience`` epochs, at most ``max_drops``
      times (the paper: 3 times).
    - ``step``: one drop every ``step_epochs`` epochs, at most ``max_drops`` times.
    - ``cosine``: from the initial lr to ``min_lr`` over all steps after warmup.

    All three start with ``warmup_steps`` of linear warmup. Groups with ``fixed_lr`` (the
    layers copied from net A, with --from_A_fixed_lr) keep their initial learning rate. Call
    :meth:`update` before every optimizer step and :meth:`end_epoch` after validation.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str = "plateau", *,
                 total_steps: int, warmup_steps: int = 0, factor: float = 0.1,
                 max_drops: int = 3, patience: int = 2, threshold: float = 1e-3,
                 step_epochs: int = 20, min_lr: float = 0.0):
        if kind not in ("plateau", "step", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}; valid: plateau, step, cosine")
        self.optimizer, self.kind = optimizer, kind
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.factor, self.max_drops, self.patience = factor, max_drops, patience
        self.threshold, self.step_epochs, self.min_lr = threshold, step_epochs, min_lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.drops, self.best, self.bad_epochs = 0, -math.inf, 0
        self.update(0)

    def scale(self, step: int) -> float:
        """Multiplier of the initial lr for the optimizer step after ``step`` steps."""
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            return warmup * (0.5 * (1 + math.cos(math.pi * progress)))
        return warmup * self.factor ** self.drops

    def update(self, step: int) -> None:
        scale = self.scale(step)
        for group in self.optimizer.param_groups:
            base = group["initial_lr"]
            if group.get("fixed_lr"):
                group["lr"] = base
            elif self.kind == "cosine":
                floor = min(self.min_lr, base)
                group["lr"] = floor + (base - floor) * scale if step >= self.warmup_steps \
                    else base * scale
            else:
                group["lr"] = base * scale

    def end_epoch(self, epochs_done: int, val_top1: float | None) -> bool:
        """Record a finished epoch (and its validation top-1 accuracy, a fraction); return
        whether the learning rate was just divided."""
        before = self.drops
        if self.kind == "plateau" and val_top1 is not None:
            if val_top1 > self.best + self.threshold:
                self.best, self.bad_epochs = val_top1, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs > self.patience and self.drops < self.max_drops:
                    self.drops, self.bad_epochs = self.drops + 1, 0
        elif self.kind == "step":
            self.drops = min(self.max_drops, epochs_done // self.step_epochs)
        return self.drops != before

    @property
    def lr(self) -> float:
        """The learning rate of the first group that follows the schedule."""
        groups = [g for g in self.optimizer.param_groups if not g.get("fixed_lr")]
        return (groups or self.optimizer.param_groups)[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "drops": self.drops, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint has a {state['kind']!r} schedule, the config asks "
                             f"for {self.kind!r}")
        self.drops, self.best, self.bad_epochs = state["drops"], state["best"], \
            state["bad_epochs"]


def set_hyperparameters(optimizer: torch.optim.Optimizer, *, lr: float, weight_decay: float,
                        momentum: float) -> None:
    """Write the config's hyper-parameters over those a resumed optimizer state carries:
    flags given with --resume (a lower --lr after a divergence, say) must win."""
    for group in optimizer.param_groups:
        group["initial_lr"] = lr * group.get("lr_scale", 1.0)  # fine-tuning's pretrained part
        group["weight_decay"] = weight_decay if group["weight_decay"] else 0.0
        if "momentum" in group:
            group["momentum"] = momentum
