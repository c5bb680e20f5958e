"""The paper's test protocols (Sec. 3.2), importable and unit-testable; ``evaluate.py`` is
the command line around them.

Every protocol starts from the same input: the test image isotropically rescaled so that
its smallest side is Q, normalised, uncropped (one tensor per test scale). From it:

- ``center``: the centre ``image_size`` crop (torchvision's single-crop protocol; with
  several scales, the posteriors of each scale's centre crop are averaged).
- ``dense``: the fully-convolutional net (:meth:`vgg.model.VGG.to_dense`) on the whole
  image; the class-score map is spatially averaged, softmaxed, and averaged with the
  posterior of the horizontally flipped image.
- ``multicrop``: a 5x5 regular grid of ``image_size`` crops spanning the image (corners
  included), each also flipped: 50 crops per scale, posteriors averaged.
- ``dense+multicrop``: the mean of the dense and the multi-crop posteriors.

Posteriors (softmax), never logits, are averaged over flips, crops, scales and networks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgg.checkpoint import CheckpointError, load_checkpoint, load_model_state, model_from_checkpoint
from vgg.errors import UserError
from vgg.metrics import topk_correct
from vgg.model import TORCHVISION_NAMES, VGG, build_vgg
from vgg.precision import autocast, autocast_dtype
from vgg.transforms import single_test_scale

PROTOCOLS = ("center", "dense", "multicrop", "dense+multicrop")
# How the paper's tables name each protocol.
PAPER_METHOD = {"center": "centre crop", "dense": "dense", "multicrop": "multi-crop",
                "dense+multicrop": "multi-crop & dense"}
GRID = 5  # Sec. 3.2: a 5x5 grid of crops per scale, each also flipped
SCALE_SHORTHANDS = ("single", "multi")
PAPER_SCALE_STEP = 32  # Sec. 3.2 / Table 4: Q = {S - 32, S, S + 32} for a fixed S
TOPK = (1, 5)


class EvaluationError(UserError, ValueError):
    """Input that cannot be evaluated: the CLI prints it as a one-paragraph error."""


# --------------------------------------------------------------------------- crop geometry

def grid_positions(length: int, crop: int, grid: int = GRID) -> list[int]:
    """Start offsets of ``grid`` crops of size ``crop`` spaced regularly along ``length``:
    the first at 0, the last at ``length - crop`` (so the grid spans the image, borders
    included), in between rounded half-up."""
    if length < crop:
        raise EvaluationError(f"cannot take {crop}-pixel crops from a side of {length} pixels")
    if grid == 1:
        return [(length - crop) // 2]
    step = (length - crop) / (grid - 1)
    return [math.floor(i * step + 0.5) for i in range(grid)]


def center_offset(length: int, crop: int) -> int:
    """torchvision ``CenterCrop``'s offset, so ``center`` is its single-crop protocol."""
    return int(round((length - crop) / 2.0))


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    if min(height, width) < size:
        raise EvaluationError(f"image of {height}x{width} is smaller than the {size} crop")
    top, left = center_offset(height, size), center_offset(width, size)
    return image[..., top:top + size, left:left + size]


def grid_crops(image: torch.Tensor, size: int, grid: int = GRID) -> torch.Tensor:
    """(grid*grid, C, size, size): the crops at :func:`grid_positions` in row-major order
    (top-left first, bottom-right last), gathered from unfold views without a Python loop."""
    height, width = image.shape[-2:]
    tops = torch.tensor(grid_positions(height, size, grid))
    lefts = torch.tensor(grid_positions(width, size, grid))
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # (C, H-s+1, W-s+1, s, s), a view
    crops = windows[:, tops[:, None], lefts[None, :]]  # (C, grid, grid, s, s)
    return crops.flatten(1, 2).transpose(0, 1)


def multicrop_inputs(image: torch.Tensor, size: int, grid: int = GRID,
                     flip: bool = True) -> torch.Tensor:
    """Sec. 3.2's crops of one image at one scale: the grid, then each crop flipped
    (2 * grid * grid of them, 50 for the paper's 5x5 grid; without ``flip`` only the grid)."""
    crops = grid_crops(image, size, grid)
    return torch.cat([crops, crops.flip(-1)]) if flip else crops


# --------------------------------------------------------------------------- scales

def parse_train_scale(train_scale: Any) -> tuple[int, int]:
    """``S`` or ``[Smin, Smax]`` (a fixed scale may also be given as ``[S, S]``)."""
    if isinstance(train_scale, (int, float)):
        return int(train_scale), int(train_scale)
    values = [int(v) for v in train_scale]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2 or values[0] > values[1]:
        raise EvaluationError(f"train scale must be S or [Smin, Smax], got {train_scale!r}")
    return values[0], values[1]


def paper_scales(train_scale: Any, kind: str) -> list[int]:
    """Sec. 3.2's test scales for a net trained at ``train_scale``: ``single`` is Q = S
    (fixed S) or Q = (Smin + Smax) / 2 (jittered S); ``multi`` is {S - 32, S, S + 32} or
    {Smin, (Smin + Smax) / 2, Smax}."""
    smin, smax = parse_train_scale(train_scale)
    middle = single_test_scale((smin, smax))
    if kind == "single":
        return [middle]
    if kind == "multi":
        if smin == smax:
            return [smin - PAPER_SCALE_STEP, smin, smin + PAPER_SCALE_STEP]
        return [smin, middle, smax]
    raise EvaluationError(f"unknown scale shorthand {kind!r}; use one of {SCALE_SHORTHANDS}")


def resolve_scales(tokens: Sequence[str | int], train_scale: Any | None,
                   image_size: int) -> list[int]:
    """Integers and shorthands (``single``, ``multi``) to a sorted list of distinct Q, each
    checked against the network's ``image_size``."""
    scales: list[int] = []
    for token in tokens:
        if isinstance(token, int) or str(token).lstrip("-").isdigit():
            scales.append(int(token))
        elif token in SCALE_SHORTHANDS:
            if train_scale is None:
                raise EvaluationError(
                    f"--scale {token} needs the training scale, which these weights do not "
                    "record: pass --train_scale S (or Smin Smax), or give Q explicitly")
            scales += paper_scales(train_scale, str(token))
        else:
            raise EvaluationError(f"--scale takes integers or one of {SCALE_SHORTHANDS}, "
                                  f"got {token!r}")
    if not scales:
        raise EvaluationError("no test scale given")
    too_small = [q for q in scales if q < image_size]
    if too_small:
        raise EvaluationError(
            f"test scale(s) {too_small} are below the network's image size {image_size}: the "
            f"rescaled image's smallest side Q must be at least {image_size} to hold one crop")
    return sorted(set(scales))


# --------------------------------------------------------------------------- networks

@dataclass
class Network:
    """One network to evaluate, with what the report needs to describe it."""
    model: VGG
    source: str
    version: str
    batch_norm: bool
    train_scale: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Test images are resampled as the network's training images were: torchvision trained
    # on PIL's antialiased resizes, this toolkit's trainer on a plain bilinear warp.
    antialias: bool = False

    @property
    def num_classes(self) -> int:
        return self.model.classifier[-1].out_features

    @property
    def in_channels(self) -> int:
        return self.model.features[0].in_channels

    @property
    def image_size(self) -> int:
        return self.model.image_size


def network_from_checkpoint(path: str | os.PathLike) -> Network:
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    if "model_args" not in checkpoint and "classifier.6.weight" in checkpoint:
        raise CheckpointError(f"{path} is a bare state dict (torchvision-style weights), not a "
                              "checkpoint of this toolkit: pass it with --torchvision_weights")
    model = model_from_checkpoint(checkpoint, source=str(path))
    args = checkpoint["model_args"]
    config = dict(checkpoint.get("config") or {})
    train_scale = config.get("train_scale")
    return Network(model, str(path), args["version"], bool(args.get("batch_norm", False)),
                   parse_train_scale(train_scale) if train_scale is not None else None, config)


def infer_torchvision_version(state: dict[str, torch.Tensor]) -> tuple[str, bool]:
    """Which of torchvision's vgg11/13/16/19 (with or without BN) a state dict is."""
    feature_keys = {k for k in state if k.startswith("features.")}
    for version in TORCHVISION_NAMES:
        for batch_norm in (False, True):
            with torch.device("meta"):
                reference = build_vgg(version, batch_norm=batch_norm, init=None)
            if {k for k in reference.state_dict() if k.startswith("features.")} == feature_keys:
                return version, batch_norm
    raise CheckpointError("these weights match none of torchvision's vgg11/13/16/19 "
                          "(with or without _bn): pass --model_version and --batch_norm")


def network_from_torchvision(path: str | os.PathLike, version: str | None = None,
                             batch_norm: bool | None = None) -> Network:
    """A torchvision VGG state dict (``torch.save(models.vgg16(...).state_dict(), path)``,
    or the published ``vgg16-397923af.pth``) as our config A/B/D/E at 224, loaded strictly.
    ``version``/``batch_norm`` are inferred from the keys when not given."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "classifier.6.weight" not in state:
        hint = (" (this is a checkpoint of this toolkit: pass it with --checkpoint)"
                if isinstance(state, dict) and "model_args" in state else "")
        raise CheckpointError(f"{path} is not a torchvision VGG state dict{hint}")
    if version is None or batch_norm is None:
        found_version, found_bn = infer_torchvision_version(state)
        version = found_version if version is None else version
        batch_norm = found_bn if batch_norm is None else batch_norm
    fc1 = state["classifier.0.weight"]
    model = build_vgg(version, num_classes=state["classifier.6.weight"].shape[0],
                      in_channels=state["features.0.weight"].shape[1], image_size=224,
                      batch_norm=batch_norm, init=None, fc_width=fc1.shape[0])
    name = TORCHVISION_NAMES.get(version, f"config {version}") + ("_bn" if batch_norm else "")
    load_model_state(model, state, f"{path} (loaded as torchvision {name})")
    return Network(model, str(path), version, batch_norm, antialias=True)


def check_ensemble(networks: Sequence[Network]) -> None:
    """Networks whose posteriors can be averaged: same classes, channels and dataset."""
    first = networks[0]
    for other in networks[1:]:
        for what, mine, theirs in (
                ("class count", first.num_classes, other.num_classes),
                ("input channels", first.in_channels, other.in_channels),
                ("dataset", first.config.get("dataset"), other.config.get("dataset"))):
            if mine != theirs:
                raise EvaluationError(
                    f"cannot ensemble {first.source} and {other.source}: their {what} "
                    f"differs ({mine} vs {theirs}); an ensemble averages posteriors over "
                    "the same classes of the same data")


# --------------------------------------------------------------------------- posteriors

class Evaluator:
    """Posteriors of a batch of images under one protocol, averaged over scales and over
    the networks of an ensemble.

    ``batch_size`` is how many ``image_size`` crops go through a network at once; dense
    evaluation sends whole images of one size together with the same pixel budget (at
    least one image, with its flip), so large images are processed one at a time.
    ``flip=False`` drops the horizontal flips of dense and multi-crop evaluation, for data
    whose mirror image is not an image of the same class (digits: ``DatasetSpec.hflip``)."""

    def __init__(self, models: Sequence[VGG], protocol: str, *, device: str | torch.device = "cpu",
                 precision: str = "auto", batch_size: int = 64, grid: int = GRID,
                 flip: bool = True) -> None:
        if protocol not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {protocol!r}; choose one of "
                                  f"{', '.join(PROTOCOLS)}")
        if batch_size < 1:
            raise EvaluationError(f"batch size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.protocol = protocol
        self.batch_size = batch_size
        self.grid = grid
        self.flip = flip
        self.dtype = autocast_dtype(precision, self.device)
        self.memory_format = (torch.channels_last if self.device.type == "cuda"
                              else torch.contiguous_format)
        self.models = [m.eval().to(self.device, memory_format=self.memory_format)
                       for m in models]
        self.dense_models = [m.to_dense().eval() for m in self.models]

    # one forward pass, logits as float32
    def _forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return net(x).float()

    def _crop_posteriors(self, model: VGG, crops: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._forward(model, chunk).softmax(1)
                          for chunk in crops.split(self.batch_size)]).cpu()

    def center(self, model: VGG, images: Sequence[torch.Tensor]) -> torch.Tensor:
        crops = torch.stack([center_crop(image, model.image_size) for image in images])
        return self._crop_posteriors(model, crops)

    def multicrop(self, model: VGG, images: Sequence[torch.Tensor]) -> torch.Tensor:
        crops = torch.cat([multicrop_inputs(image, model.image_size, self.grid, self.flip)
                           for image in images])
        per_crop = self._crop_posteriors(model, crops)
        return per_crop.view(len(images), -1, per_crop.shape[-1]).mean(1)

    def dense(self, index: int, images: Sequence[torch.Tensor]) -> torch.Tensor:
        model, dense = self.models[index], self.dense_models[index]
        posteriors: list[torch.Tensor | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if min(image.shape[-2:]) < model.image_size:
                raise EvaluationError(f"image of {tuple(image.shape[-2:])} is smaller than the "
                                      f"network's image size {model.image_size}")
            by_shape.setdefault(tuple(image.shape), []).append(i)
        copies = 2 if self.flip else 1
        for shape, members in by_shape.items():
            pixels = shape[-1] * shape[-2] * copies
            per_pass = max(1, self.batch_size * model.image_size ** 2 // pixels)
            for start in range(0, len(members), per_pass):
                group = members[start:start + per_pass]
                x = torch.stack([images[i] for i in group])
                if self.flip:
                    x = torch.cat([x, x.flip(-1)])
                # Sec. 3.2: the class-score map is spatially averaged, then softmaxed.
                scores = self._forward(dense, x).mean((2, 3)).softmax(1).cpu()
                if self.flip:
                    scores = scores.view(2, len(group), -1).mean(0)
                for i, row in zip(group, scores, strict=True):
                    posteriors[i] = row
        return torch.stack(posteriors)

    def posteriors(self, batch: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """``batch[i][s]``: image i rescaled to the s-th test scale, (C, H, W). Returns the
        (len(batch), classes) posteriors, averaged over scales and networks."""
        num_scales = len(batch[0])
        batch = [[image.to(self.device, non_blocking=True) for image in sample]
                 for sample in batch]  # crop on the device, not on the host
        total = None
        for index, model in enumerate(self.models):
            for s in range(num_scales):
                images = [sample[s] for sample in batch]
                if self.protocol == "center":
                    p = self.center(model, images)
                elif self.protocol == "dense":
                    p = self.dense(index, images)
                elif self.protocol == "multicrop":
                    p = self.multicrop(model, images)
                else:
                    p = 0.5 * (self.dense(index, images) + self.multicrop(model, images))
                total = p if total is None else total + p
        return total / (num_scales * len(self.models))

    def inputs_per_image(self, scales: Sequence[int]) -> float:
        """Rough network inputs (in ``image_size`` crops) per image, for batching."""
        size = min(m.image_size for m in self.models)
        copies = 2 if self.flip else 1
        dense = sum(copies * (q / size) ** 2 * 4 / 3 for q in scales)  # 4:3 images
        grid = copies * self.grid ** 2 * len(scales)
        crops = {"center": len(scales), "multicrop": grid, "dense": dense,
                 "dense+multicrop": dense + grid}
        return crops[self.protocol] * len(self.models)


# --------------------------------------------------------------------------- data

class MultiScale:
    """A dataset transform giving the image at each test scale: a tuple with one tensor
    per transform (each rescales to its own Q)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, *args, **kwargs):
        return tuple(t(*args, **kwargs) for t in self.transforms)


def collate_samples(batch: Sequence[tuple[Any, int]]) -> tuple[list[tuple[torch.Tensor, ...]],
                                                                torch.Tensor]:
    """Keep images as a list: at Q > image_size they differ in size."""
    images = [image if isinstance(image, (tuple, list)) else (image,) for image, _ in batch]
    return images, torch.tensor([int(label) for _, label in batch])


# --------------------------------------------------------------------------- counting

class Tally:
    """Top-1/top-5 counts, per-class counts and the confusion matrix (rows: true class,
    columns: predicted class). Ties count against the model, as in
    :func:`vgg.metrics.topk_correct`; a tied top-1 is entered as the competing class, so
    the matrix's diagonal equals the top-1 count. Non-finite posteriors (a diverged
    network) are counted wrong, never right."""

    def __init__(self, num_classes: int, ks: tuple[int, ...] = TOPK) -> None:
        self.num_classes = num_classes
        self.ks = ks
        self.correct = torch.zeros(len(ks), dtype=torch.long)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.nonfinite = torch.zeros((), dtype=torch.long)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        scores, targets = scores.detach().float().cpu(), targets.cpu().long()
        if targets.numel() and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise EvaluationError(f"labels {targets.min().item()}..{targets.max().item()} fall "
                                  f"outside the network's {self.num_classes} classes")
        finite = torch.isfinite(scores).all(1)
        self.nonfinite += (~finite).sum()
        scores = torch.where(finite[:, None], scores, torch.full_like(scores, -math.inf))
        self.correct += topk_correct(scores, targets, self.ks)
        # Top-1 prediction, pessimistic like topk_correct: the target only when no other
        # class scores at least as high, otherwise the best other class.
        target_scores = scores.gather(1, targets[:, None])
        top1 = (scores >= target_scores).sum(1) == 1
        others = scores.scatter(1, targets[:, None], -math.inf)
        predicted = torch.where(top1, targets, others.argmax(1))
        self.confusion.view(-1).index_add_(
            0, targets * self.num_classes + predicted, torch.ones_like(targets))

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the counts of all processes (each saw a disjoint shard)."""
        packed = torch.cat([self.correct, self.nonfinite.view(1), self.confusion.view(-1)])
        packed = reduce_sum(packed)
        k = len(self.ks)
        self.correct = packed[:k].clone()
        self.nonfinite = packed[k].clone()
        self.confusion = packed[k + 1:].view(self.num_classes, self.num_classes).clone()

    def summary(self) -> dict[str, Any]:
        n = self.count
        out: dict[str, Any] = {"samples": n, "nonfinite_posteriors": int(self.nonfinite)}
        for k, correct in zip(self.ks, self.correct.tolist(), strict=True):
            accuracy = correct / n if n else float("nan")
            out[f"top{k}_correct"] = correct
            out[f"top{k}_accuracy"] = accuracy
            out[f"top{k}_error"] = 1.0 - accuracy
        per_class = self.confusion.sum(1)
        diagonal = self.confusion.diagonal()
        out["per_class"] = {
            "count": per_class.tolist(),
            "top1_correct": diagonal.tolist(),
            "top1_accuracy": [(c / t if t else None) for c, t in
                              zip(diagonal.tolist(), per_class.tolist(), strict=True)],
        }
        return out


def evaluate(evaluator: Evaluator, loader: Iterable, num_classes: int, *,
             progress: bool = False, total: int | None = None) -> Tally:
    """Posteriors of every batch of ``loader`` (as made by :func:`collate_samples`),
    counted into a :class:`Tally`. Distributed callers all-reduce the tally afterwards."""
    from tqdm import tqdm

    tally = Tally(num_classes)
    with tqdm(total=total, disable=not progress, unit="img", dynamic_ncols=True) as bar:
        for images, targets in loader:
            tally.update(evaluator.posteriors(images), targets)
            bar.update(len(targets))
            bar.set_postfix(top1_err=f"{1 - int(tally.correct[0]) / max(tally.count, 1):.3f}")
    return tally


# --------------------------------------------------------------------------- reporting

def format_train_scale(train_scale: tuple[int, int] | None) -> str:
    if train_scale is None:
        return "-"
    smin, smax = train_scale
    return str(smin) if smin == smax else f"[{smin};{smax}]"


def paper_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table laid out like PAPER.md Tables 3-5 (errors in %)."""
    lines = ["| config | train S | test Q | method | top-1 err | top-5 err |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['config']} | {row['train_S']} | {row['test_Q']} | "
                     f"{row['method']} | {100 * row['top1_error']:.1f} | "
                     f"{100 * row['top5_error']:.1f} |")
    return "\n".join(lines)


def describe_networks(networks: Sequence[Network]) -> dict[str, str]:
    configs = [n.version.replace("_lrn", "-LRN") + ("-BN" if n.batch_norm else "")
               for n in networks]
    scales = sorted({format_train_scale(n.train_scale) for n in networks})
    return {"config": " & ".join(configs), "train_S": ", ".join(scales)}


def write_confusion_csv(confusion: torch.Tensor, path: str | os.PathLike,
                        class_names: Sequence[str] | None = None) -> None:
    names = list(class_names) if class_names else [str(i) for i in range(len(confusion))]
    names = [str(n).replace(",", " ") for n in names]
    with open(path, "w") as f:
        f.write("true\\predicted," + ",".join(names) + "\n")
        for name, row in zip(names, confusion.tolist(), strict=True):
            f.write(name + "," + ",".join(map(str, row)) + "\n")


def default_output(source: str, split: str, protocol: str, scales: Sequence[int]) -> Path:
    """``runs/x/best.pt`` -> ``runs/x/eval_best_test_dense_256-384-512.json``."""
    path = Path(source)
    tag = protocol.replace("+", "_")
    return path.with_name(f"eval_{path.stem}_{split}_{tag}_{'-'.join(map(str, scales))}.json")
