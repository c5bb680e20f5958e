"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017; fastai's lr_find): train from the config's initial weights while the lr
grows exponentially from ``--lr_find_range``'s first value to its last over
``--lr_find_steps`` optimizer steps; smooth the loss (a centred moving average), and
suggest a tenth of the lr at which the smoothed loss was lowest (the loss is still falling
fast there, well short of where it blows up).

    python train.py --config configs/quickstart_digits.yaml --lr_find
    python -m vgg.lr_find --config configs/quickstart_digits.yaml      # the same

Every config works, fine-tuning included (--weights/--init_from, --freeze and
--pretrained_lr_multiplier act as in training: each parameter group keeps its lr ratio). It
runs the trainer's own step on the trainer's data, model and optimizer, and leaves no run
state behind: no run directory, checkpoint or metrics file; it prints a table and writes one
picture, ``<out_dir>/lr_find-<run name>.png``.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vgg.configuration import ConfigError
from vgg.engine import StepSettings, configure_backends, prepare_model, train_step

SMOOTHING = 0.05  # the centred moving average spans this share of the steps on each side
DIVERGED = 4.0  # stop once the running mean loss exceeds this x its lowest value
MIN_DROP = 0.1  # the smoothed loss must fall this share below its start for a suggestion
TABLE_ROWS = 12


@dataclass
class RangeTest:
    """The losses of one range test, step by step."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # each step's mean loss
    stopped: str = "the last lr was reached"

    def add(self, lr: float, loss: float) -> None:
        self.lrs.append(lr)
        self.losses.append(loss)

    @property
    def smoothed(self) -> list[float]:
        """The loss averaged over a window centred on each step (shorter at the ends). A
        centred window has no lag: a trailing average, fastai's, reaches its lowest value
        several steps, and so several times the lr, after the loss did, and a suggestion
        taken from it was measured too high to train (Digits, 100 steps: 0.04)."""
        half = max(1, round(SMOOTHING * len(self.losses)))
        return [sum(window) / len(window) for i in range(len(self.losses))
                for window in [self.losses[max(0, i - half): i + half + 1]]]

    def diverged(self) -> bool:
        """The mean of the last few steps exceeds :data:`DIVERGED` times the lowest such
        mean so far (a trailing window: the test runs forward)."""
        k = 5
        means = [sum(self.losses[i - k:i]) / k for i in range(k, len(self.losses) + 1)]
        return bool(means) and means[-1] > DIVERGED * min(means)

    @property
    def lowest(self) -> int:
        """The step at which the smoothed loss was lowest."""
        smoothed = self.smoothed
        return min(range(len(smoothed)), key=smoothed.__getitem__)

    def suggestion(self) -> float | None:
        """A tenth of the lr of the lowest smoothed loss; None when the loss never fell
        :data:`MIN_DROP` below its start (no lr in the range trains this configuration)."""
        smoothed = self.smoothed
        if not smoothed or smoothed[self.lowest] > (1 - MIN_DROP) * smoothed[0]:
            return None
        return self.lrs[self.lowest] / 10


def range_test(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               windows: Iterator[Sequence[tuple[torch.Tensor, torch.Tensor]]],
               settings: StepSettings, *, steps: int, lr_range: tuple[float, float]
               ) -> RangeTest:
    """Take up to ``steps`` optimizer steps on ``windows`` (each a step's micro-batches) at
    exponentially growing lrs, each parameter group at its ``lr_scale`` times the lr (the
    pretrained layers of a fine-tuned network). Stops early at a non-finite loss or once
    the loss diverges (:meth:`RangeTest.diverged`)."""
    first, last = lr_range
    test = RangeTest()
    for step, window in zip(range(steps), windows, strict=False):
        lr = first * (last / first) ** (step / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        result = train_step(model, optimizer, window, **vars(settings))
        loss = result.loss_sum / result.samples
        if not result.finite or not math.isfinite(loss):
            test.stopped = f"the loss was not finite at lr {lr:.2e}"
            break
        test.add(lr, loss)
        if test.diverged():
            test.stopped = f"the loss diverged at lr {lr:.2e}"
            break
    return test


def report(test: RangeTest, current_lr: float) -> str:
    """The table (about :data:`TABLE_ROWS` rows, evenly spaced in steps) and the verdict."""
    smoothed = test.smoothed
    lines = [f"{'step':>6}{'lr':>11}{'loss':>9}{'smoothed':>10}"]
    every = max(1, len(test.lrs) // TABLE_ROWS)
    shown = sorted(set(range(0, len(test.lrs), every)) | {test.lowest, len(test.lrs) - 1})
    for i in shown:
        mark = "  <- lowest" if i == test.lowest else ""
        lines.append(f"{i + 1:>6}{test.lrs[i]:>11.2e}{test.losses[i]:>9.4f}"
                     f"{smoothed[i]:>10.4f}{mark}")
    lines.append(f"stopped: {test.stopped}")
    suggestion = test.suggestion()
    if suggestion is None:
        lines.append(f"no suggestion: the smoothed loss never fell {MIN_DROP:.0%} below its "
                     "start at any lr of the range: this configuration does not learn as it "
                     "is (a deep net without --batch_norm true? see the README's 'Not "
                     "learning?')")
    else:
        lines.append(f"suggested lr: {suggestion:.2g} (a tenth of {test.lrs[test.lowest]:.2e}, "
                     f"where the smoothed loss was lowest); the config has {current_lr:g}: "
                     f"train with --lr {suggestion:.2g}")
    return "\n".join(lines)


def draw(test: RangeTest, path: Path, title: str) -> Path:
    """The loss and smoothed loss against the lr (log axis), the suggestion marked."""
    from matplotlib.figure import Figure

    from vgg.plot import save_figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    axes.plot(test.lrs, test.losses, color="0.75", label="loss per step")
    axes.plot(test.lrs, test.smoothed, color="C0", label="smoothed")
    if (suggestion := test.suggestion()) is not None:
        axes.axvline(suggestion, color="C3", linestyle="--",
                     label=f"suggested lr {suggestion:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def windows_of(data: Any, accumulation: int) -> Iterator[list]:
    """The training data as optimizer steps' windows, epoch after epoch."""
    for epoch in itertools.count():
        data.sampler.set_epoch(epoch, 0)
        batches = iter(data.train_loader)
        while window := list(itertools.islice(batches, accumulation)):
            yield window


def lr_find(cfg: Any, resume: Any, rank: int, world: int, device: torch.device) -> int:
    """train.py's ``--lr_find``: the range test of ``cfg``'s run, nothing of a run written."""
    import train  # the trainer's own model, data and optimizer builders
    from vgg.pretrained import read_weights
    from vgg.rng import seed_everything
    from vgg.train_data import build_data

    if resume is not None:
        raise ConfigError("--lr_find starts from the config's initial weights, not a run's "
                          "state: to test from a run's weights, give --init_from "
                          "runs/<run> instead of --resume")
    seed_everything(cfg.seed + rank)
    configure_backends(device, cfg.deterministic, cfg.cudnn_benchmark)
    pretrained = read_weights(cfg.pretrained_from) if cfg.pretrained_from else None
    data = build_data(cfg, rank, world, device=device,
                      normalization=pretrained.preprocessing if pretrained else None)
    model_args = train.network_args(cfg, data)
    say = print if rank == 0 else (lambda *a, **k: None)
    model = train.build_model(cfg, model_args, None, pretrained, say)
    model.activation_checkpointing = cfg.activation_checkpointing
    resumable, settings, _ = train.build_training(cfg, model, model_args, data, device)
    network = prepare_model(model, device, channels_last=settings.channels_last,
                            compile=cfg.compile).train()
    name = cfg.run_name or f"{cfg.dataset}-{cfg.model_version}"
    say(f"lr range test of VGG-{cfg.model_version} on {cfg.dataset}: lr {cfg.lr_find_range[0]:g} "
        f"to {cfg.lr_find_range[1]:g} over {cfg.lr_find_steps} steps of batch "
        f"{cfg.batch_size} ({cfg.lr_find_steps / data.steps_per_epoch:.1f} epochs)", flush=True)
    test = range_test(network, resumable.optimizer, windows_of(data, data.accumulation),
                      settings, steps=cfg.lr_find_steps, lr_range=tuple(cfg.lr_find_range))
    if not test.lrs:
        say(f"no result: {test.stopped} at the first step; lower --lr_find_range's first lr")
    elif rank == 0:
        say(report(test, cfg.lr))
        path = draw(test, Path(cfg.out_dir) / f"lr_find-{name}.png",
                    f"lr range test: VGG-{cfg.model_version} on {cfg.dataset}")
        say(f"picture: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import train

    return train.main([*(sys.argv[1:] if argv is None else argv), "--lr_find", "true"])


if __name__ == "__main__":
    sys.exit(main())
