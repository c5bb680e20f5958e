"""Random number generators: seeding them all, and their state as plain tensors and values
that a ``weights_only`` checkpoint can hold, for an exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) RNG states as tensors and plain values, so a
    checkpoint holding them loads with ``weights_only=True``."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    # legacy=True (the default) gives the tuple form; the dict form is only for legacy=False.
    assert isinstance(np_state, tuple)
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np_state
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
