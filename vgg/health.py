"""Is the network learning? The health monitor of a training run, and the one warning it
gives when the run is not: the evidence, and the fixes that fit this configuration.

The commonest failure of VGG trained from scratch is a loss that sits at ln(C) (6.9 on
ImageNet, 2.303 on CIFAR-10, 0.693 on two classes) for days while the plateau schedule
divides the lr towards zero. The monitor judges each logging interval's and each epoch's
training loss and top-1 against chance once a warm-up budget of steps has passed, watches
the share of non-finite steps, and notes a plateau drop of the lr while the loss has not
moved from chance. As evidence it also reads, on the step that closes a logging interval
only, the gradient norm of each conv stage and the share of dead ReLU channels per stage
(sampled on a few images of that step through forward hooks): one device read per logging
interval, beside the one every step already makes. Its counters live in
``TrainState.health``, so they survive a resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from vgg.model import VGG

LOSS_TOLERANCE = 0.03  # a mean loss above (1 - this) x ln(C) is at chance
ACCURACY_MARGIN = 0.1  # top-1 within this share of the way from chance to 100% is at chance
BUDGET_STEPS = (100, 1000)  # after lr warm-up: one epoch's steps, clamped to this range
CHANCE_INTERVALS = 2  # consecutive logging intervals at chance, past the budget
DIVERGING_SHARE = 0.5  # non-finite steps in a logging interval that make a divergence
DEAD_SAMPLE = 8  # images of the sampled step whose ReLU outputs are looked at
VANISHING = 1e-3  # a stage whose gradient norm is below this x the largest stage's
SMALL_DATA = 5000  # training images below which a from-scratch deep net is tiny-data
DEEP = ("B", "C", "D", "E")  # configurations the paper initialised from net A


def at_chance(loss: float, top1_err: float, num_classes: int) -> bool:
    """The mean loss is still near ln(C), the loss of a uniform guess (also with label
    smoothing), and top-1 accuracy near 1/C."""
    chance = 1 / num_classes
    return (loss >= (1 - LOSS_TOLERANCE) * math.log(num_classes)
            and 1 - top1_err <= chance + ACCURACY_MARGIN * (1 - chance))


def budget_steps(steps_per_epoch: int, warmup_steps: int) -> int:
    """Optimizer steps before the loss is expected to have left chance: the lr warm-up and
    then one epoch, at least 100 and at most 1000 steps."""
    low, high = BUDGET_STEPS
    return warmup_steps + min(max(steps_per_epoch, low), high)


class Stalled(RuntimeError):
    """The run is not learning, under ``--on_stall stop``: a failed run, not a user error."""


class HealthMonitor:
    """Watches one run. Call :meth:`sampling` around the step that closes a logging
    interval, :meth:`measure` right after it (the step's gradients are still there), then
    :meth:`check_interval` with the interval's row, and :meth:`check_epoch` with each
    epoch's row. Each check returns the warning's text the first time the run is judged
    not learning, else None; ``stops``: the run is then to stop (--on_stall stop), else
    only warned. ``state`` is ``TrainState.health``, restored on resume: a run
    warned before is not warned again."""

    def __init__(self, network: VGG, *, num_classes: int, steps_per_epoch: int,
                 warmup_steps: int, remedies: list[tuple[str, str]], state: dict[str, Any],
                 stops: bool = False, grad_clip: float | None = None,
                 sample_dead: bool = True):
        self.num_classes, self.remedies, self.stops = num_classes, remedies, stops
        self.budget = budget_steps(steps_per_epoch, warmup_steps)
        self.grad_clip, self.sample_dead = grad_clip, sample_dead
        # Each stage between poolings: its ReLUs and its conv (and BN) parameters.
        self.stages = [([m for m in stage if isinstance(m, nn.ReLU)],
                        [p for m in stage for p in m.parameters()])
                       for stage in network.stages()]
        self.state = state
        for key, value in (("chance_intervals", 0), ("chance_epochs", 0), ("checked_step", 0),
                           ("nonfinite_steps", 0), ("warned_step", None)):
            state.setdefault(key, value)
        self._dead: list[list[torch.Tensor]] = [[] for _ in self.stages]
        self.measures: dict[str, Any] = {}

    @contextmanager
    def sampling(self, due: bool) -> Iterator[None]:
        """While the step runs, when ``due``: count, per stage, the ReLU channels that are
        zero at every position of the first :data:`DEAD_SAMPLE` images (first micro-batch
        only; a recomputed forward is not counted twice). On the device: no read here."""
        if not (due and self.sample_dead):
            yield
            return
        self._dead = [[] for _ in self.stages]
        seen: set[int] = set()

        def hook(stage: int, module: nn.Module, inputs, output: torch.Tensor) -> None:
            if id(module) in seen:
                return
            seen.add(id(module))
            alive = output[:DEAD_SAMPLE].detach().amax(dim=(0, 2, 3)) > 0
            self._dead[stage].append(torch.stack([(~alive).sum(), torch.tensor(
                alive.numel(), device=alive.device)]))

        handles = [relu.register_forward_hook(lambda m, i, o, s=s: hook(s, m, i, o))
                   for s, (relus, _) in enumerate(self.stages) for relu in relus]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def measure(self, result) -> dict[str, float | None]:
        """Per conv stage, the gradient norm of the step just taken (before clipping; None
        when the update was skipped or the stage is frozen) and the sampled dead-ReLU share,
        read from the device together. Kept as :attr:`measures` for the evidence."""
        # A bound clip scaled every gradient by clip / (norm + 1e-6), as torch does: undo it.
        clipped = (min(1.0, self.grad_clip / (result.grad_norm + 1e-6))
                   if self.grad_clip is not None and math.isfinite(result.grad_norm) else 1.0)
        values, names = [], []
        for index, (_, params) in enumerate(self.stages, 1):
            grads = [p.grad for p in params if p.grad is not None]
            if grads and result.applied:
                values.append(torch.nn.utils.get_total_norm(grads).float() / clipped)
                names.append(f"grad_norm_stage{index}")
        for index, counts in enumerate(self._dead, 1):
            if counts:
                dead, total = torch.stack(counts).sum(0).float()
                values.append(dead / total)
                names.append(f"dead_relu_stage{index}")
        self._dead = [[] for _ in self.stages]
        read = torch.stack([v.cpu() for v in values]).tolist() if values else []
        self.measures = dict(zip(names, read, strict=True))
        return self.measures

    def check_interval(self, row: dict[str, Any] | None, step: int, nonfinite_steps: int
                       ) -> str | None:
        """Judge a logging interval (``row`` None: it had no finite step)."""
        steps = step - self.state["checked_step"]
        nonfinite = nonfinite_steps - self.state["nonfinite_steps"]
        self.state.update(checked_step=step, nonfinite_steps=nonfinite_steps)
        chance = row is not None and at_chance(row["loss"], row["top1_err"], self.num_classes)
        self.state["chance_intervals"] = self.state["chance_intervals"] + 1 if chance else 0
        if steps > 0 and nonfinite / steps >= DIVERGING_SHARE:
            return self._warn(step, [f"{nonfinite} of the last {steps} steps had a "
                                     "non-finite loss or gradient (skipped): the run diverges"],
                              diverging=True)
        if chance and step >= self.budget and \
                self.state["chance_intervals"] >= CHANCE_INTERVALS:
            assert row is not None  # chance needs a row
            return self._warn(step, [
                self._chance_line(row, "training")
                + f", for {self.state['chance_intervals']} logging intervals up to step {step}"
                f" (the warm-up budget is {self.budget} steps)"])
        return None

    def check_epoch(self, row: dict[str, Any], step: int, lr_divided: bool) -> str | None:
        """Judge an epoch's training totals (``row``, with the lr after the schedule's
        end-of-epoch decision, and whether it divided it)."""
        chance = at_chance(row["loss"], row["top1_err"], self.num_classes)
        self.state["chance_epochs"] = self.state["chance_epochs"] + 1 if chance else 0
        if chance and lr_divided:
            return self._warn(step, [
                self._chance_line(row, f"epoch {row['epoch']}'s training"),
                f"the plateau schedule divided the lr (from {row['lr']:.1e}) at the end of this "
                "epoch while the loss has not moved from chance: a lower lr will not start "
                "learning"])
        if chance and step >= self.budget and self.state["chance_epochs"] >= 2:
            return self._warn(step, [
                self._chance_line(row, f"epoch {row['epoch']}'s training")
                + f", {self.state['chance_epochs']} epochs in a row, at step {step} (the "
                f"warm-up budget is {self.budget} steps)"])
        return None

    def _chance_line(self, row: dict[str, Any], what: str) -> str:
        c = self.num_classes
        return (f"{what} loss {row['loss']:.4f} against ln {c} = {math.log(c):.4f} (a uniform "
                f"guess), top-1 accuracy {1 - row['top1_err']:.1%} against chance {1 / c:.1%}")

    def _warn(self, step: int, evidence: list[str], diverging: bool = False) -> str | None:
        if self.state["warned_step"] is not None:
            return None
        self.state["warned_step"] = step
        evidence = evidence + stage_evidence(self.measures)
        # A divergence is cured by a lower or slower-starting lr, or by clipping.
        remedies = ([line for flag, line in self.remedies if flag in ("lr", "warmup_epochs")]
                    + ["--grad_clip 1: clip the gradient's norm"] if diverging
                    else [line for _, line in self.remedies])
        return (f"the network is not learning (step {step}).\n  evidence:\n"
                + "".join(f"    - {line}\n" for line in evidence)
                + "  what to change, for this configuration:\n"
                + "".join(f"    - {line}\n" for line in remedies)
                + "  (--on_stall stop ends such a run here with a checkpoint; --on_stall "
                  "ignore turns this check off)")


def stage_evidence(measures: dict[str, float]) -> list[str]:
    """The per-stage gradient norms and dead-ReLU shares as evidence lines."""
    lines = []
    norms = [v for k, v in sorted(measures.items()) if k.startswith("grad_norm_stage")]
    if norms:
        line = ("gradient norm per conv stage, input first: "
                + " ".join(f"{n:.1e}" for n in norms))
        finite = [n for n in norms if math.isfinite(n)]
        if finite and max(finite) > 0 and finite[0] < VANISHING * max(finite):
            line += (f" (stage 1 gets {finite[0] / max(finite):.0e} of the largest: the "
                     "gradient vanishes on its way down)")
        lines.append(line)
    dead = [v for k, v in sorted(measures.items()) if k.startswith("dead_relu_stage")]
    if dead:
        lines.append(f"dead ReLU channels per stage (zero on all of {DEAD_SAMPLE} sampled "
                     "images): " + " ".join(f"{d:.0%}" for d in dead))
    return lines


def remedies(cfg: Any, train_images: int) -> list[tuple[str, str]]:
    """The fixes that fit ``cfg`` (a config.Config), most likely first, as (the flag it
    changes, the line to show)."""
    fine_tuning = cfg.pretrained_from is not None
    found = []
    if not cfg.batch_norm and not fine_tuning:
        found.append(("batch_norm", "--batch_norm true: BatchNorm after every conv "
                      "(torchvision's _bn nets) trains VGG from scratch at the paper's lr"))
    found.append(("lr", f"--lr: {cfg.lr:g} now; `python train.py <these flags> --lr_find` runs "
                  "the lr range test and suggests one"))
    if cfg.warmup_epochs == 0:
        found.append(("warmup_epochs", "--warmup_epochs 1: a linear lr warm-up over the "
                      "first epoch"))
    if not fine_tuning and cfg.init != "from_A":
        found.append(("init", f"--init kaiming (now {cfg.init}): He initialisation keeps the "
                      "signal's scale through deep ReLU stacks" if cfg.init != "kaiming"
                      else "--init xavier (now kaiming)"))
        if cfg.model_version in DEEP:
            found.append(("init_from_A", "--init from_A --init_from_A runs/<a trained net A>: "
                          "the paper's own remedy (Sec. 3.1) for its deeper configurations"))
    if not fine_tuning and train_images < SMALL_DATA:
        smaller = ", ".join(flag for flag, needed in (
            ("--model_version A", cfg.model_version != "A"),
            ("--width 0.25", cfg.width > 0.25)) if needed)
        found.append(("model_version", f"only {train_images} training images: "
                      + (f"a smaller net ({smaller}), and " if smaller else "")
                      + "pretrained weights (--weights, or --init_from a run of yours on "
                      "related images; see configs/finetune_imagefolder.yaml): from scratch, "
                      "so few images rarely train a VGG"))
    return found


def early_advice(cfg: Any, train_images: int) -> str | None:
    """Said at the start of a run that is known not to learn as configured: a deep net
    without BatchNorm, from scratch, on a small dataset (its plateau schedule would divide
    the lr to nothing while the loss sits at ln(C))."""
    if (cfg.batch_norm or cfg.pretrained_from is not None or cfg.init == "from_A"
            or cfg.model_version not in DEEP or train_images >= SMALL_DATA):
        return None
    return (f"note: VGG-{cfg.model_version} without BatchNorm, from scratch, on "
            f"{train_images} training images rarely leaves chance (the loss stays at "
            f"ln(classes)). Start from pretrained weights instead (configs/"
            f"finetune_imagefolder.yaml; offline, --init_from a run of yours on related "
            f"images), or at least add --batch_norm true. The health monitor will say if "
            f"this run does not learn.")
