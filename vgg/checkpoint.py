"""Checkpoints: written atomically, read with ``weights_only=True``, errors a user can act on.

A checkpoint is a dict holding at least ``model`` (the state dict) and ``model_args`` (the
keyword arguments of :func:`vgg.build_vgg` that rebuild the network), so that any tool can
reconstruct the model without the run's config; the trainer adds its own state beside them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgg.atomic import replace_atomically
from vgg.errors import UserError
from vgg.model import VGG, build_vgg


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or of another network."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write through a temporary file and an atomic rename: a crash or kill mid-write
    leaves the previous checkpoint intact."""
    with replace_atomically(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or not saved by "
            f"torch.save with plain tensors): {type(error).__name__}: {error}") from None


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line reason instead of torch's dump."""
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
    model = build_vgg(**checkpoint["model_args"], init=None)
    load_model_state(model, checkpoint["model"], source)
    return model
