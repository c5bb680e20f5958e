"""Checkpoints: written atomically, read with ``weights_only=True``, errors a user can act on.

A checkpoint is a dict holding at least ``model`` (the state dict) and ``model_args`` (the
keyword arguments of :func:`vgg.build_vgg` that rebuild the network), so that any tool can
reconstruct the model without the run's config; the trainer adds its own state beside them
(vgg/train_state.py), and ``preprocessing`` (:func:`preprocessing_record`): the input the
network expects, so that it can be evaluated without the training data.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgg.atomic import replace_atomically
from vgg.errors import UserError
from vgg.model import VGG, build_vgg


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, unwritable or of another network."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write through a temporary file and an atomic rename: a crash, a kill or a full disk
    mid-write leaves the previous checkpoint intact."""
    try:
        with replace_atomically(path, "wb") as f:
            torch.save(state, f)
    except OSError as error:
        reason = ("no space left on the device" if error.errno == errno.ENOSPC
                  else error.strerror or str(error))
        raise CheckpointError(f"could not write the checkpoint {path}: {reason}. The previous "
                              "checkpoints in its folder are kept; free space (or fix the "
                              "folder) and continue with --resume") from None


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The dict saved at ``path``. With ``mmap`` the tensors are mapped, not read: cheap
    when only the small entries (the step) are wanted."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises several types for truncated/foreign files
        # torch's own text would advise weights_only=False (running the file's code) or
        # filing an issue: neither helps here, so only its kind is named.
        raise CheckpointError(
            f"{path} is not a readable checkpoint: truncated, corrupt, or not saved by "
            "torch.save with plain tensors and containers (files holding other Python "
            f"objects are refused, as they could run code) ({type(error).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict (it holds a "
                              f"{type(checkpoint).__name__})")
    return checkpoint


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step at which the training checkpoint ``path`` was written (-1 when
    it records none), read without loading its tensors."""
    step = load_checkpoint(path, mmap=True).get("step", -1)
    return step if isinstance(step, int) else -1


def model_state(checkpoint: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The network weights in a loaded file: its ``model`` entry, or the file itself when
    it is a bare state dict (``torch.save(model.state_dict(), path)``)."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{source} holds no network weights: expected a 'model' entry "
                              "(or the file itself) to map parameter names to tensors")
    return dict(state)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line reason instead of torch's dump."""
    if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: its 'model' entry is a {type(state).__name__}, not "
                              "a state dict of parameter names and tensors")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & given.keys() if own[k] != given[k])
    if missing or unexpected or reshaped:
        details = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
                   for label, names in (("missing", missing), ("unexpected", unexpected),
                                        ("different shapes at", reshaped)) if names]
        raise CheckpointError(f"{source} holds a different network: " + "; ".join(details))
    model.load_state_dict(state)


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> VGG:
    if "model_args" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(f"{source} has no 'model'/'model_args': not a checkpoint of "
                              "this toolkit (for torchvision .pth weights use evaluate.py "
                              "--torchvision_weights)")
    if not isinstance(checkpoint["model_args"], dict):
        raise CheckpointError(f"{source}: its 'model_args' entry is not a dict")
    model = build_vgg(**checkpoint["model_args"], init=None)
    load_model_state(model, checkpoint["model"], source)
    return model


def preprocessing_record(dataset: str, classes: Sequence[str], image_size: int,
                         mean: Sequence[float], std: Sequence[float],
                         train_scale: Sequence[int], resize: str = "bilinear"
                         ) -> dict[str, Any]:
    """The ``preprocessing`` entry of a checkpoint: how its network's input was made.
    Pixels are normalised as ``(pixel/255 - mean) / std`` per channel after resizing the
    shorter side (``resize``: ``bilinear`` as the trainer does, ``antialias`` as PIL);
    ``train_scale`` is the training S range [Smin, Smax]."""
    if len(mean) != len(std):
        raise ValueError(f"mean {list(mean)} and std {list(std)} differ in channels")
    return {"dataset": str(dataset), "classes": [str(c) for c in classes],
            "in_channels": len(mean), "image_size": int(image_size),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "train_scale": [int(s) for s in train_scale], "resize": resize}


def run_checkpoint(run_dir: Path) -> Path:
    """A run directory's best checkpoint (best.pt; last.pt before a first validation)."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"{run_dir} holds no best.pt or last.pt: not a finished run directory")


def newest_run(runs: Path = Path("runs"), alternatives: str = "--checkpoint RUN_DIR_OR_FILE"
               ) -> Path:
    """The best.pt of the most recently written run under ``runs``: what evaluate.py and
    predict.py use right after training when no checkpoint is given."""
    found = sorted(runs.glob("*/best.pt"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise CheckpointError(f"no checkpoint given and no {runs}/<run>/best.pt found: train "
                              f"one (python train.py ...) or pass {alternatives}")
    return found[-1]
