"""The engine, after torchvision's references and DeiT's engine.py: how the network runs on
a device for training: one optimizer step (:func:`train_step`), one epoch
(:func:`train_one_epoch`) and validation (:func:`validate`), with the precision, memory
format and process group they run under."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from vgg.distributed import all_reduce_sum, get_world_size, is_distributed
from vgg.health import HealthMonitor, Stalled
from vgg.metrics import topk_correct
from vgg.precision import AUTOCAST_DTYPES, autocast, resolve_precision
from vgg.progress import Progress
from vgg.train_state import Resumable, Tally, TrainState


class NonFiniteLoss(RuntimeError):
    """The loss or gradient diverged under ``--on_nonfinite stop``: a failed run, not a
    user error."""


def precision_setup(precision: str, device: torch.device
                    ) -> tuple[str, torch.dtype | None, torch.amp.GradScaler | None]:
    """(resolved name, autocast dtype or None for fp32, GradScaler for fp16 else None)."""
    precision = resolve_precision(precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return precision, AUTOCAST_DTYPES[precision], scaler


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
    # Module.to takes a device and a memory_format together; its stub's overloads do not.
    model = model.to(device, memory_format=torch.channels_last  # type: ignore[call-overload]
                     if channels_last else torch.contiguous_format)
    if compile:
        # An OptimizedModule (an nn.Module) for a module; the stub says only Callable.
        model = torch.compile(model)  # type: ignore[assignment]
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
        # DDP all-reduces the gradients on the window's last micro-batch only.
        with (model.no_sync() if isinstance(model, DDP) and i < len(window) - 1
              else contextlib.nullcontext()):
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
    params = [p for group in optimizer.param_groups for p in group["params"]
              if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
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
            # clip_grads_with_norm_ takes the parameters (it reads their .grad), not the grads
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm, foreach=True)
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




@dataclass
class StepSettings:
    """How every step runs: the keyword arguments of :func:`train_step` fixed for a run."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    channels_last: bool = False


def train_one_epoch(model: nn.Module, resumable: Resumable, loader, state: TrainState,
                    settings: StepSettings, *, micro: int, accumulation: int,
                    steps_per_epoch: int, cfg: Any, run_dir: Any, run_log: Any, stop: Any,
                    monitor: HealthMonitor | None = None) -> bool:
    """Train from ``state.position`` to the end of the epoch, ``accumulation`` micro-batches
    of ``micro`` samples per optimizer step; False when stopped early (a signal, or
    ``cfg.max_steps``), after writing last.pt. With ``resumable.ema`` (--ema) each applied
    step also updates the average of the weights. Every ``cfg.log_interval`` steps a row goes
    to ``run_log``, with the ``monitor``'s per-stage measures of that step, and the monitor
    judges it (:func:`report_stall`); every ``cfg.checkpoint_interval`` steps last.pt is
    written through ``run_dir``."""
    batches, interval, started, waited = iter(loader), Tally(), time.time(), 0.0
    with tqdm(total=steps_per_epoch, initial=state.position // (micro * accumulation),
              desc=f"epoch {state.epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
              disable=not (run_log.main and run_log.bar)) as progress:
        while True:
            step_started = time.perf_counter()
            if not (window := list(itertools.islice(batches, accumulation))):
                break
            waited += time.perf_counter() - step_started  # for the loader: data-bound?
            resumable.schedule.update(state.step)
            # Sampled: the step closing a logging interval, and the epoch's last (whose
            # measures are the evidence of the monitor's epoch check).
            sampled = monitor is not None and ((state.step + 1) % cfg.log_interval == 0
                                               or (state.step + 1) % steps_per_epoch == 0)
            with (monitor.sampling(sampled) if monitor else contextlib.nullcontext()):
                result = train_step(model, resumable.optimizer, window, **vars(settings),
                                    stop_requested=stop.requested)
            if result.applied and resumable.ema is not None:
                # Once per optimizer step, after all its micro-batches: the weights moved.
                resumable.ema.update(resumable.model)
            state.record(result, sum(len(y) for _, y in window))
            run_log.pace.add(result.samples, time.perf_counter() - step_started)
            if not result.finite and cfg.on_nonfinite == "stop":
                raise NonFiniteLoss(
                    f"non-finite loss or gradient at step {state.step} (epoch "
                    f"{state.epoch + 1}); the update was not applied and the run stopped. "
                    "Last good checkpoint: "
                    f"{run_dir.last if run_dir.last.exists() else 'none written yet'}. Resume "
                    "from it with a lower --lr, --grad_clip, or --on_nonfinite skip")
            if result.finite:
                interval.add(result)
            progress.set_postfix({"loss": f"{result.loss_sum / result.samples:.3f}",
                                  "lr": f"{resumable.schedule.lr:.2e}",
                                  "img/s": f"{run_log.pace.images_per_s:.0f}"}, refresh=False)
            progress.update()
            if state.step % cfg.log_interval == 0:
                row = (interval_row(interval, started, waited, state, resumable.schedule.lr,
                                    settings.device) if interval.samples else None)
                if row is not None:
                    run_log.log(row | (monitor.measure(result) if monitor else {}))
                if monitor is not None and report_stall(monitor, monitor.check_interval(
                        row, state.step, state.nonfinite_steps), state, run_log):
                    run_dir.save_last(resumable.checkpoint(state))
                    raise stalled(state.step, run_dir.last)
                interval, started, waited = Tally(), time.time(), 0.0
            elif sampled:
                assert monitor is not None  # only sampled with a monitor
                monitor.measure(result)
            stopping = result.stop or (cfg.max_steps is not None
                                        and state.step >= cfg.max_steps)
            if stopping or (cfg.checkpoint_interval
                            and state.step % cfg.checkpoint_interval == 0):
                run_dir.save_last(resumable.checkpoint(state))
            if stopping:
                return False
    return True


def report_stall(monitor: HealthMonitor, warning: str | None, state: TrainState,
                 run_log: Any) -> bool:
    """Send a :class:`HealthMonitor` warning to the console, the metrics file and W&B;
    True when the run is to stop there (``--on_stall stop``): the caller then writes its
    checkpoint, which holds the monitor's verdict, and raises :func:`stalled`."""
    if warning is None:
        return False
    run_log.health(warning, epoch=state.epoch + 1, step=state.step)
    return monitor.stops


def stalled(step: int, checkpoint: Any) -> Stalled:
    return Stalled(f"stopped by --on_stall stop at step {step}: the network is not learning "
                   f"(the warning above says why and what to change). Checkpoint: "
                   f"{checkpoint}; resume it with other flags, or --on_stall warn|ignore")


def interval_row(interval: Tally, started: float, waited: float, state: TrainState,
                 lr: float, device: torch.device) -> dict[str, Any]:
    """The metrics row of one logging interval (``kind=train``): ``waited`` of its seconds
    since ``started`` went to waiting for the loader (``data_wait`` is their share)."""
    now = time.time()
    grad_norm = interval.grad_norm_sum / interval.applied if interval.applied else None
    memory = ({"max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
              if device.type == "cuda" else {})
    return {"kind": "train", "epoch": state.epoch + 1, "step": state.step, "lr": lr,
            "nonfinite_steps": state.nonfinite_steps, "overflow_steps": state.overflow_steps,
            **interval.errors(), "grad_norm": grad_norm,
            "images_per_s": interval.samples / (now - started),
            "data_wait": waited / (now - started), **memory, "time": now}


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, device: torch.device, *,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
             stop: Any = None, progress: Progress | None = None) -> dict[str, float] | None:
    """Loss and top-1/top-5 error over ``loader``, summed over processes: with an unpadded
    shard per process (vgg.data.sampling.ShardSampler) every sample counts exactly once.
    None when ``stop`` (a :class:`vgg.stop.StopRequest`) was requested on any process
    during it: a preempted run must not spend its grace period validating. Each batch's
    images are counted into ``progress``: on ImageNet this is 50,000 images, no silent pause."""
    model = model.module if isinstance(model, DDP) else model  # no DDP hooks here
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top1, top5, n, stop
    for x, y in loader:
        if stop is not None and stop.requested:
            totals[4] = 1
            break
        x = x.to(device, non_blocking=True,
                 memory_format=torch.channels_last if channels_last else torch.preserve_format)
        y = y.to(device, non_blocking=True)
        with autocast(device, autocast_dtype):
            logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[1:3] += topk_correct(logits, y, (1, 5)).double()
        totals[3] += len(y)
        if progress is not None:
            progress.update(len(y))
    model.train(was_training)
    loss, top1, top5, n, stopped = all_reduce_sum(totals).tolist()
    if stopped:
        return None
    n_safe = max(n, 1)
    return {"loss": loss / n_safe, "top1_err": 1 - top1 / n_safe, "top5_err": 1 - top5 / n_safe,
            "n": int(n)}
