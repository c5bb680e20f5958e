"""The paper's test protocols (Sec. 3.2) and the loop that scores a dataset with them:
crop geometry, test scales, posteriors, and the top-1/top-5 tally. Loading weight files is
:mod:`vgg.networks`' job, writing results :mod:`vgg.report`'s; ``evaluate.py`` is the
command line around the three.

Every protocol starts from the same input: the test image isotropically rescaled so that
its smallest side is Q, normalised, uncropped (one tensor per test scale). From it:

- ``center``: the centre ``image_size`` crop (torchvision's single-crop protocol; with
  several scales, the posteriors of each scale's centre crop are averaged).
- ``dense``: the fully-convolutional net (:meth:`vgg.model.VGG.to_dense`) on the whole
  image; the class-score map is spatially averaged, softmaxed, and averaged with the
  posterior of the horizontally flipped image.
- ``multicrop``: a 5x5 regular grid of ``image_size`` crops spanning the image (corners
  included), each also flipped: 50 crops per scale, posteriors averaged. Where the grid
  repeats a crop (Q close to the crop size) each distinct crop is computed once and
  weighted by how often the grid holds it.
- ``dense+multicrop``: the mean of the dense and the multi-crop posteriors.

Posteriors (softmax), never logits, are averaged over flips, crops, scales and networks.
The averaging is done in log space (log-mean-exp of log-softmax), so a class whose
posterior underflows float32 (a logit gap above ~104) keeps its rank instead of tying at 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vgg.errors import UserError
from vgg.metrics import TOPK, topk_correct
from vgg.model import VGG
from vgg.precision import autocast, autocast_dtype, resolve_precision
from vgg.transforms import single_test_scale

if TYPE_CHECKING:
    from vgg.progress import Progress

PROTOCOLS = ("center", "dense", "multicrop", "dense+multicrop")
# How the paper's tables name each protocol.
PAPER_METHOD = {"center": "centre crop", "dense": "dense", "multicrop": "multi-crop",
                "dense+multicrop": "multi-crop & dense"}
GRID = 5  # Sec. 3.2: a 5x5 grid of crops per scale, each also flipped
SCALE_SHORTHANDS = ("single", "multi")
PAPER_SCALE_STEP = 32  # Sec. 3.2 / Table 4: Q = {S - 32, S, S + 32} for a fixed S ...
PAPER_IMAGE_SIZE = 224  # ... at the paper's crop size
FAR_OUTSIDE = 1.5  # a test scale this factor outside the paper's range gets a warning


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


def grid_crops(image: torch.Tensor, size: int,
               grid: int = GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct crops of the ``grid`` x ``grid`` crops at :func:`grid_positions`, in
    row-major order (top-left first, bottom-right last), gathered from unfold views without
    a Python loop, and how many of the grid's crops each one is (all 1 unless the image is
    within ``grid - 2`` pixels of the crop size, where positions repeat)."""
    height, width = image.shape[-2:]
    tops, top_counts = torch.tensor(grid_positions(height, size, grid)).unique(
        return_counts=True)
    lefts, left_counts = torch.tensor(grid_positions(width, size, grid)).unique(
        return_counts=True)
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # (C, H-s+1, W-s+1, s, s), a view
    crops = windows[:, tops[:, None], lefts[None, :]]  # (C, rows, columns, s, s)
    counts = top_counts[:, None] * left_counts[None, :]
    return crops.flatten(1, 2).transpose(0, 1), counts.flatten()


def multicrop_inputs(image: torch.Tensor, size: int, grid: int = GRID,
                     flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 3.2's crops of one image at one scale: the grid, then each crop flipped (2 * grid
    * grid of them, 50 for the paper's 5x5 grid; without ``flip`` only the grid), each
    distinct crop once, with its multiplicity (see :func:`grid_crops`)."""
    crops, counts = grid_crops(image, size, grid)
    if not flip:
        return crops, counts
    return torch.cat([crops, crops.flip(-1)]), torch.cat([counts, counts])


def log_mean_exp(log_p: torch.Tensor, dim: int = 0,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """log(mean(exp(log_p))) along ``dim`` (weighted by ``weights`` if given), computed
    without leaving log space: the average of posteriors, with ranks kept where they
    underflow."""
    if weights is None:
        return torch.logsumexp(log_p, dim) - math.log(log_p.shape[dim])
    shape = [1] * log_p.dim()
    shape[dim] = -1
    log_w = weights.to(log_p).log().view(shape)
    return torch.logsumexp(log_p + log_w, dim) - log_w.logsumexp(dim)


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


def scale_step(image_size: int) -> int:
    """The step between the paper's test scales {S - 32, S, S + 32} for a fixed S, for a
    network of ``image_size``: 32 pixels at the paper's 224 (a seventh of the crop), the same
    share of a smaller crop (9 at 64, 5 at 32), so that small networks get the same
    relative scales."""
    return max(1, round(PAPER_SCALE_STEP * image_size / PAPER_IMAGE_SIZE))


def paper_scales(train_scale: Any, kind: str, image_size: int = PAPER_IMAGE_SIZE) -> list[int]:
    """Sec. 3.2's test scales for a net trained at ``train_scale``: ``single`` is Q = S
    (fixed S) or Q = (Smin + Smax) / 2 (jittered S); ``multi`` is {S - 32, S, S + 32}
    (the step scaled with ``image_size``: :func:`scale_step`) or {Smin, (Smin + Smax) / 2,
    Smax}."""
    smin, smax = parse_train_scale(train_scale)
    middle = single_test_scale((smin, smax))
    if kind == "single":
        return [middle]
    if kind == "multi":
        if smin == smax:
            step = scale_step(image_size)
            return [smin - step, smin, smin + step]
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
                    "record: pass --train_scale S (or Smin,Smax), or give Q explicitly")
            scales += paper_scales(train_scale, str(token), image_size)
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


def network_scales(tokens: Sequence[str | int],
                   networks: Sequence[tuple[tuple[int, int] | None, int]]
                   ) -> tuple[list[int], list[list[int]]]:
    """The test scales of an ensemble, per network: integers Q for every network, the
    shorthands (``single``, ``multi``) from each network's own training scale and image
    size (``networks``: one ``(train_scale, image_size)`` each), as the paper tested every
    net at the Q of its own S (Tables 3-4) before averaging their posteriors (Table 6).
    Returns the sorted union of the Q (the images are rescaled to each once) and, per
    network, the positions of its Q in that union."""
    per_network = [resolve_scales(tokens, train_scale, image_size)
                   for train_scale, image_size in networks]
    union = sorted(set().union(*per_network))
    return union, [[union.index(q) for q in scales] for scales in per_network]


def scale_warning(scales: Sequence[int], train_scale: tuple[int, int] | None,
                  image_size: int) -> str | None:
    """A warning when a test scale is far (over 1.5x) outside the range the paper tested a
    network of this training scale at (Tables 3-4: Q within one step of [Smin, Smax]), where
    objects appear at a size the network never saw; None when every Q is sensible."""
    if train_scale is None:
        return None
    multi = paper_scales(train_scale, "multi", image_size)
    low, high = multi[0] / FAR_OUTSIDE, multi[-1] * FAR_OUTSIDE
    far = [q for q in scales if not low <= q <= high]
    if not far:
        return None
    single = paper_scales(train_scale, "single", image_size)[0]
    smin, smax = train_scale
    trained = str(smin) if smin == smax else f"[{smin};{smax}]"
    return (f"warning: test scale Q={','.join(map(str, far))} is far outside what the paper "
            f"tested for a network trained at S={trained}: objects appear "
            f"{max(far) / single:.1f}x their training size and the error will be much higher "
            f"than the network's. The paper's Q for this network: {single} (--scale single) "
            f"or {','.join(map(str, multi))} (--scale multi).")


# --------------------------------------------------------------------------- posteriors

class Evaluator:
    """Posteriors of a batch of images under one protocol, averaged over scales and over
    the networks of an ensemble.

    ``batch_size`` is how many ``image_size`` crops go through a network at once; dense
    evaluation sends whole images of one size together with the same pixel budget (at
    least one image, with its flip), so large images are processed one at a time.
    ``flip=False`` drops the horizontal flips of dense and multi-crop evaluation, for data
    whose mirror image is not an image of the same class (digits: ``DatasetSpec.hflip``).
    ``precision`` is fp32 unless bf16/fp16 autocast is asked for (``auto``: bf16 on a GPU);
    ``self.precision`` is the one actually used. ``scale_indices[m]`` lists which of each
    sample's scales network ``m`` is evaluated at (:func:`network_scales`; default: all):
    each network's posteriors are averaged over its own scales, then over the networks."""

    def __init__(self, models: Sequence[VGG], protocol: str, *, device: str | torch.device = "cpu",
                 precision: str = "fp32", batch_size: int = 64, grid: int = GRID,
                 flip: bool = True,
                 scale_indices: Sequence[Sequence[int]] | None = None) -> None:
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
        if scale_indices is not None and len(scale_indices) != len(models):
            raise EvaluationError(f"{len(scale_indices)} scale lists for {len(models)} networks")
        self.scale_indices = scale_indices
        self.precision = resolve_precision(precision, self.device)
        self.dtype = autocast_dtype(self.precision, self.device)
        self.memory_format = (torch.channels_last if self.device.type == "cuda"
                              else torch.contiguous_format)
        # Module.to takes a device and a memory_format together; its stub's overloads do not.
        self.models = [m.eval().to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
                       for m in models]
        self.dense_models = [m.to_dense().eval() for m in self.models]

    # one forward pass, logits as float32
    def _forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return net(x).float()

    def _crop_log_posteriors(self, model: VGG, crops: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._forward(model, chunk).log_softmax(1)
                          for chunk in crops.split(self.batch_size)]).cpu()

    def center(self, model: VGG, images: Sequence[torch.Tensor]) -> torch.Tensor:
        crops = torch.stack([center_crop(image, model.image_size) for image in images])
        return self._crop_log_posteriors(model, crops)

    def multicrop(self, model: VGG, images: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = [multicrop_inputs(image, model.image_size, self.grid, self.flip)
                  for image in images]
        per_crop = self._crop_log_posteriors(model, torch.cat([crops for crops, _ in inputs]))
        per_image = per_crop.split([len(crops) for crops, _ in inputs])
        return torch.stack([log_mean_exp(log_p, 0, counts)
                            for log_p, (_, counts) in zip(per_image, inputs, strict=True)])

    def dense(self, index: int, images: Sequence[torch.Tensor]) -> torch.Tensor:
        model, dense = self.models[index], self.dense_models[index]
        log_posteriors: dict[int, torch.Tensor] = {}  # image index: its row, every image
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
                scores = self._forward(dense, x).mean((2, 3)).log_softmax(1).cpu()
                scores = log_mean_exp(scores.view(copies, len(group), -1))
                for i, row in zip(group, scores, strict=True):
                    log_posteriors[i] = row
        return torch.stack([log_posteriors[i] for i in range(len(images))])

    def log_posteriors(self, batch: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """``batch[i][s]``: image i rescaled to the s-th test scale, (C, H, W). Returns the
        (len(batch), classes) log of the posteriors averaged over each network's scales,
        then over the networks."""
        batch = [[image.to(self.device, non_blocking=True) for image in sample]
                 for sample in batch]  # crop on the device, not on the host
        per_network = []
        for index in range(len(self.models)):
            scales = (self.scale_indices[index] if self.scale_indices is not None
                      else range(len(batch[0])))
            per_network.append(log_mean_exp(torch.stack(
                [self.protocol_log_posteriors(index, [sample[s] for sample in batch])
                 for s in scales])))
        return log_mean_exp(torch.stack(per_network))

    def protocol_log_posteriors(self, index: int, images: Sequence[torch.Tensor]
                                ) -> torch.Tensor:
        """Network ``index``'s log-posteriors of ``images`` (one scale) under the protocol."""
        model = self.models[index]
        if self.protocol == "center":
            return self.center(model, images)
        if self.protocol == "dense":
            return self.dense(index, images)
        if self.protocol == "multicrop":
            return self.multicrop(model, images)
        return log_mean_exp(torch.stack([self.dense(index, images),
                                         self.multicrop(model, images)]))

    def posteriors(self, batch: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """The averaged posteriors themselves: ``exp`` of :meth:`log_posteriors` (whose
        ranking is the one to count: these may underflow to ties at 0)."""
        return self.log_posteriors(batch).exp()

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


def collate_samples(batch: Sequence[tuple[Any, int]]) -> tuple[list[Sequence[torch.Tensor]],
                                                                torch.Tensor]:
    """Keep images as a list: at Q > image_size they differ in size."""
    images: list[Sequence[torch.Tensor]] = [
        image if isinstance(image, (tuple, list)) else (image,) for image, _ in batch]
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


def sample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """``limit`` of ``range(n)`` drawn at random (seeded, sorted), or all of them: a sample
    across the split, never its first images (sorted by class in image folders)."""
    if limit is None or limit >= n:
        return list(range(n))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:limit].tolist())


def run_protocol(evaluator: Evaluator, loader: Iterable, tally: Tally, *,
                 progress: Progress | None = None) -> Tally:
    """Scores every batch of ``loader`` (as made by :func:`collate_samples`) with the
    evaluator's protocol and counts them into ``tally``, images and top-1 error so far
    into ``progress``. Distributed callers all-reduce the tally afterwards."""
    for images, targets in loader:
        tally.update(evaluator.log_posteriors(images), targets)
        if progress is not None:
            progress.update(len(targets),
                            top1_err=f"{1 - int(tally.correct[0]) / max(tally.count, 1):.3f}")
    return tally
