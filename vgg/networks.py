"""Weight files to evaluable networks: a checkpoint of this toolkit or a torchvision VGG state
dict becomes a :class:`Network`, the model with the preprocessing it was trained with
(mean/std, resampling, training scale, classes), and an ensemble is checked to be averageable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgg.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
    run_checkpoint,
    weights_key,
)
from vgg.evaluation import EvaluationError, parse_train_scale
from vgg.model import TORCHVISION_NAMES, VGG, build_vgg
from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class Network:
    """One network to evaluate, with what its inputs and the report need."""
    model: VGG
    source: str
    version: str
    batch_norm: bool
    train_scale: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Test images are resampled as the network's training images were: torchvision trained
    # on PIL's antialiased resizes, this toolkit's trainer on a plain bilinear warp.
    antialias: bool = False
    # The normalisation the network was trained with; None (a checkpoint older than the
    # "preprocessing" record): the dataset spec's.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    dataset: str | None = None
    # What trained it (vgg/provenance.py); None for torchvision's and older checkpoints.
    provenance: dict[str, Any] | None = None
    # A checkpoint's weights it holds: "raw", or "ema" (their average, train.py --ema).
    weights: str = "raw"

    @property
    def num_classes(self) -> int:
        scores = self.model.classifier[-1]
        assert isinstance(scores, nn.Linear)  # a VGG's classifier ends in its score layer
        return scores.out_features

    @property
    def in_channels(self) -> int:
        first = self.model.features[0]
        assert isinstance(first, nn.Conv2d)  # every Table 1 config starts with a conv
        return first.in_channels

    @property
    def image_size(self) -> int:
        return self.model.image_size


def network_from_checkpoint(path: str | os.PathLike, weights: str = "auto") -> Network:
    """A checkpoint of this toolkit, or a run directory's best.pt (its contents checked by
    :func:`vgg.checkpoint.load_checkpoint`, as every command's are), with the weights that
    ``weights`` names (:func:`vgg.checkpoint.weights_key`)."""
    if Path(path).is_dir():
        path = run_checkpoint(Path(path))
    checkpoint = load_checkpoint(path)
    if "model_args" not in checkpoint and "classifier.6.weight" in checkpoint:
        raise CheckpointError(f"{path} is a bare state dict (torchvision-style weights), not a "
                              "checkpoint of this toolkit: pass it with --torchvision_weights")
    model = model_from_checkpoint(checkpoint, source=str(path), weights=weights)
    args = checkpoint["model_args"]
    config = dict(checkpoint.get("config") or {})
    record = checkpoint.get("preprocessing") or {}
    train_scale = record.get("train_scale", config.get("train_scale"))
    classes = record.get("classes")
    return Network(model, str(path), args["version"], bool(args.get("batch_norm")),
                   parse_train_scale(train_scale) if train_scale is not None else None,
                   config, antialias=record.get("resize") == "antialias",
                   mean=tuple(record["mean"]) if record else None,
                   std=tuple(record["std"]) if record else None,
                   classes=tuple(classes) if classes else None,
                   dataset=record.get("dataset") or config.get("dataset"),
                   provenance=checkpoint.get("provenance"),
                   weights="ema" if weights_key(checkpoint, weights, str(path)) == "model_ema"
                   else "raw")


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
    or the published ``vgg16-397923af.pth``) as our config A/B/D/E at 224, loaded strictly,
    preprocessed as torchvision trained it (ImageNet mean/std, PIL's antialiased resize).
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
    return Network(model, str(path), version, batch_norm, antialias=True,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD)


def check_ensemble(networks: Sequence[Network]) -> None:
    """Networks whose posteriors can be averaged: same classes, channels and dataset, and
    inputs prepared the same way (one rescaled image feeds them all)."""
    first = networks[0]
    for other in networks[1:]:
        for what, mine, theirs in (
                ("class count", first.num_classes, other.num_classes),
                ("input channels", first.in_channels, other.in_channels),
                ("dataset", first.dataset, other.dataset),
                ("class names", first.classes, other.classes),
                ("input normalisation (mean, std)", (first.mean, first.std),
                 (other.mean, other.std)),
                ("resampling (antialiased or not)", first.antialias, other.antialias)):
            if mine != theirs:
                raise EvaluationError(
                    f"cannot ensemble {first.source} and {other.source}: their {what} "
                    f"differs ({mine} vs {theirs}); an ensemble averages posteriors over "
                    "the same classes of the same data")
