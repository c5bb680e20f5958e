"""The pieces of train.py's recipe that other tools reuse (the throughput benchmark runs the
trainer's own :func:`train_step`): optimizer and parameter groups, learning-rate schedules,
precision, model preparation, one optimizer step over a window of micro-batches,
evaluation, RNG state, the metrics file and W&B. The training loop itself is in train.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import netrc
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset

from vgg.atomic import replace_atomically
from vgg.distributed import all_reduce_sum, get_world_size, is_distributed
from vgg.metrics import topk_correct
from vgg.precision import AUTOCAST_DTYPES, autocast, resolve_precision

# ---------------------------------------------------------------------------- optimizer


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True,
                 copied_from_A: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Parameters split by (weight decay?, learning rate fixed?). Sec. 3.1: the layers a
    deeper net copies from a trained net A keep their initial learning rate (``fixed_lr``);
    with ``decay_norm_and_bias=False`` biases and norm weights (1-d tensors) get no decay."""
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
                    copied_from_A: Sequence[str] = ()) -> torch.optim.Optimizer:
    """SGD (the paper's) or AdamW over :func:`param_groups`; fused kernels on CUDA."""
    groups = param_groups(model, weight_decay, decay_norm_and_bias, copied_from_A)
    fused = next(model.parameters()).device.type == "cuda" or None
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                               fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adamw")


# ---------------------------------------------------------------------------- schedule


class LRSchedule:
    """The learning rate of every step, counted in optimizer steps.

    - ``plateau`` (the paper's): divide by ``1/factor`` when validation top-1 has not
      improved by ``threshold`` for more than ``patience`` epochs, at most ``max_drops``
      times (the paper: 3 times).
    - ``step``: one drop every ``step_epochs`` epochs, at most ``max_drops`` times.
    - ``cosine``: from the initial lr to ``min_lr`` over all steps after warmup.

    All three start with ``warmup_steps`` of linear warmup. Groups with ``fixed_lr`` (the
    layers copied from net A) keep their initial learning rate throughout. Call
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


# ---------------------------------------------------------------------------- precision


def precision_setup(precision: str, device: torch.device
                    ) -> tuple[str, torch.dtype | None, torch.amp.GradScaler | None]:
    """(resolved name, autocast dtype or None for fp32, GradScaler for fp16 else None)."""
    precision = resolve_precision(precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return precision, AUTOCAST_DTYPES[precision], scaler


# ---------------------------------------------------------------------------- model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside DDP and/or torch.compile wrappers."""
    if isinstance(model, DDP):
        model = model.module
    return getattr(model, "_orig_mod", model)


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False,
                  compile: bool = False, distributed: bool | None = None) -> nn.Module:
    """Move to ``device`` (NHWC if ``channels_last``); under DDP convert BN to SyncBN (GPU;
    gloo has no SyncBN kernels, so on CPU BN stays per-process), compile, and wrap in DDP.
    Returns the model to train; :func:`unwrap` gives back the plain network."""
    distributed = is_distributed() if distributed is None else distributed
    if distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if channels_last
                     else torch.contiguous_format)
    if compile:
        model = torch.compile(model)
    if distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    gradient_as_bucket_view=True)
    return model


def configure_backends(device: torch.device, deterministic: bool, cudnn_benchmark: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ---------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    """One optimizer step's totals over all processes, read from the device in the step's
    one synchronisation."""

    loss_sum: float  # summed loss over the window (unscaled; divide by samples)
    top1: int  # samples whose target scored highest
    top5: int
    samples: int  # samples in the window, all processes
    grad_norm: float  # global L2 norm of the gradient before clipping
    finite: bool  # False: the loss or gradient is not finite, other than an fp16 overflow
    applied: bool  # the optimizer stepped: finite, and no fp16 overflow for the GradScaler
    stop: bool  # some process passed stop_requested


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               window: Sequence[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device,
               autocast_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None, label_smoothing: float = 0.0,
               grad_clip: float | None = None, channels_last: bool = False,
               stop_requested: bool = False) -> StepResult:
    """One optimizer step over ``window``, this process's micro-batches of one effective
    batch. The loss of each micro-batch is its summed loss divided by the number of samples
    in the whole window, so the accumulated gradient equals that of one big batch, also for
    a short last window. Under DDP the gradient all-reduce runs only on the last micro-batch
    (``no_sync``); every process must hold the same number of samples (ResumableSampler
    guarantees it), so DDP's average over processes is the global batch mean.

    A non-finite loss or gradient skips the update (gradients zeroed) and returns
    ``finite=False``. With a GradScaler (fp16) a non-finite gradient at a scale above 1 is an
    overflow, not a divergence: the scaler skips that update and lowers its scale
    (``applied=False``, ``finite=True``). Every process reaches the same verdicts, and
    learns whether any of them asked to stop, through one small all-reduce that the step
    needs anyway."""
    optimizer.zero_grad(set_to_none=True)
    window_samples = sum(len(y) for _, y in window)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, dtype=torch.long, device=device)
    for i, (x, y) in enumerate(window):
        x = x.to(device, non_blocking=True,
                 memory_format=torch.channels_last if channels_last else torch.preserve_format)
        y = y.to(device, non_blocking=True)
        sync = i == len(window) - 1 or not isinstance(model, DDP)
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with autocast(device, autocast_dtype):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum",
                                   label_smoothing=label_smoothing)
            scaled = loss / window_samples
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach()
        correct += topk_correct(logits.detach(), y, (1, 5))
    if scaler is not None:
        scaler.unscale_(optimizer)
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    # DDP has already averaged the gradients, so the norm is the same on every process and
    # stays out of the sum.
    flags = torch.stack([~torch.isfinite(loss_sum), ~torch.isfinite(grad_norm),
                         torch.full((), stop_requested, device=device)]).float()
    totals = all_reduce_sum(torch.cat([loss_sum.float()[None], correct.float(), flags]))
    loss, top1, top5, bad_loss, bad_grad, stop, norm = \
        torch.cat([totals, grad_norm.float()[None]]).tolist()
    # An fp16 overflow needs a scale above 1; at or below it the gradient is non-finite on
    # its own (else the scaler would halve the scale towards 0 and skip every step forever).
    overflow = bad_grad > 0 and scaler is not None and scaler.get_scale() > 1.0
    finite = bad_loss == 0 and (bad_grad == 0 or overflow)
    applied = bad_loss == 0 and bad_grad == 0
    if applied:
        if grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(grads, grad_clip, grad_norm, foreach=True)
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.update()  # lowers the scale after an overflow, raises it after a good run
    return StepResult(loss, int(top1), int(top5), window_samples * get_world_size(), norm,
                      finite, applied, stop > 0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, *,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False
             ) -> dict[str, float]:
    """Loss and top-1/top-5 error over ``loader``, summed over processes: with an unpadded
    shard per process (vgg.distributed.ShardSampler) every sample counts exactly once."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for x, y in loader:
        x = x.to(device, non_blocking=True,
                 memory_format=torch.channels_last if channels_last else torch.preserve_format)
        y = y.to(device, non_blocking=True)
        with autocast(device, autocast_dtype):
            logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[1:3] += topk_correct(logits, y, (1, 5)).double()
        totals[3] += len(y)
    model.train(was_training)
    loss, top1, top5, n = all_reduce_sum(totals).tolist()
    n_safe = max(n, 1)
    return {"loss": loss / n_safe, "top1_err": 1 - top1 / n_safe, "top5_err": 1 - top5 / n_safe,
            "n": int(n)}


# ---------------------------------------------------------------------------- RNG state


class SeededSamples(Dataset):
    """Wraps a dataset whose transforms draw from torch's global generator: item
    ``(index, seed)`` is ``dataset[index]`` drawn with the generator seeded by ``seed``
    (the caller's generator state is restored afterwards). With ResumableSampler's
    per-sample seeds, augmentation no longer depends on worker count or interruptions."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]



def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) RNG states as tensors and plain values, so a
    checkpoint holding them loads with ``weights_only=True``."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                       int(np_has_gauss), float(np_gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- logging

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
        path = Path(path)
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

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
