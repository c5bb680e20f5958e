"""Provenance: which code, libraries, machine and data made a file. Training checkpoints
(``"provenance"``), evaluate.py's results JSON and vgg.export's files carry the record of
:func:`provenance`, and evaluate.py prints it (:func:`describe`):

- ``toolkit``: this package's version (pyproject.toml in a checkout, else the installed
  distribution's);
- ``git``: ``{"commit", "dirty"}`` of the checkout the code runs from, None outside one (an
  installed package, no git);
- ``python``, ``torch``, ``torchvision``, ``cuda``, ``cudnn`` (None where torch has none),
  ``device``: the device's name (the GPU's model);
- ``dataset``: :func:`dataset_fingerprint` of the images read (None where none were):
  their count per split, the number of classes, and a SHA-256 of the index: each image's
  path relative to the data root (or, for data held in memory, its pixels) and label, so
  that moving the data root keeps it and renaming, adding or relabelling a file changes it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from vgg.data.file_list import FileList, path_prefix
from vgg.data.shard_samples import ShardSamples

PACKAGE = "vgg-reproduced"
PACKAGE_DIR = Path(__file__).resolve().parent
# git answers in milliseconds; a hung one (a stale network mount) must not hold up a run.
GIT_TIMEOUT_S = 5
# The key of the record in an exported file's metadata (beside vgg_preprocessing).
PROVENANCE_KEY = "vgg_provenance"
# The record's fields with the types each may have (vgg.checkpoint checks them on loading).
FIELDS: dict[str, tuple[type, ...]] = {
    "toolkit": (str, type(None)), "git": (dict, type(None)), "python": (str,),
    "torch": (str,), "torchvision": (str, type(None)), "cuda": (str, type(None)),
    "cudnn": (int, type(None)), "device": (str,), "dataset": (dict, type(None))}


def toolkit_version() -> str | None:
    """This toolkit's version: pyproject.toml's when running from a checkout (the one place
    it is written; an installed copy in the environment may be older), else the installed
    distribution's; None when neither is found."""
    try:
        project = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())["project"]
        if project.get("name") == PACKAGE:
            return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(source: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """``{"commit": HEAD's hash, "dirty": whether a tracked file differs from it}`` of the
    git checkout in which ``source`` (a file, or a folder holding tracked files; by default
    this package) is tracked; None when it is in none (an installed package, even inside
    someone's repository), git is missing or refuses the repository, or does not answer
    within GIT_TIMEOUT_S."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(source.parent),
                                   *args], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "--", source.name) is None:
        return None
    status = git("status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None:
        return None
    lines = status.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":  # a repository without a commit yet
        return None
    return {"commit": commit, "dirty": any(not line.startswith("#") for line in lines)}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.machine()})"


def provenance(device: torch.device | str, dataset: dict[str, Any] | None) -> dict[str, Any]:
    """The record of this process on ``device``, reading the images ``dataset`` fingerprints
    (:func:`dataset_fingerprint`; None: no images read)."""
    import torchvision

    return {"toolkit": toolkit_version(), "git": git_state(),
            "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None, "device": device_name(device), "dataset": dataset}


def _index(dataset: Dataset) -> tuple[Any, list[int] | None]:
    """The dataset under any Subsets (--train_subset, --limit) and the indices into it that
    they select (None: all of it)."""
    indices = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _index_entries(files: Sequence[str], labels: Any, chosen: Sequence[int] | range,
                   root: str | os.PathLike | None) -> list[bytes]:
    """``<path relative to root>\t<label>`` of each chosen file (root None: the names are
    relative already), in the file system's bytes (``os.fsencode``: UTF-8, and names that
    are not UTF-8 as they are). A FileList's names
    are cut from its buffer as bytes: decoding ImageNet's 1.28M paths one by one took
    seconds of every start."""
    prefix = path_prefix(root)  # how the readers join root and file names
    picked = np.sort(np.asarray(chosen, dtype=np.int64))  # near the sorted order: quick to sort
    values, which = np.unique(np.asarray(labels)[picked], return_inverse=True)
    tag_of = [b"\t%d" % label for label in values.tolist()]  # one bytes object per label
    tags = [tag_of[i] for i in which.tolist()]
    if isinstance(files, FileList) and files.prefix.startswith(prefix):
        folder = os.fsencode(files.prefix[len(prefix):])  # the names' folder under root
        names = files.buffer.tobytes()
        return [folder + names[start:end] + tag for start, end, tag in zip(
            files.starts[picked].tolist(), files.ends[picked].tolist(), tags, strict=True)]

    def relative(name: str) -> str:  # by a string cut: os.path.relpath x 1.28M is slow
        return name[len(prefix):] if name.startswith(prefix) else os.path.relpath(name, root)

    return [os.fsencode(relative(files[i])) + tag
            for i, tag in zip(picked.tolist(), tags, strict=True)]


def split_fingerprint(dataset: Dataset, root: str | os.PathLike) -> dict[str, Any]:
    """``{"images": count, "sha256": hash of the index}`` of one split's dataset (files:
    sorted relative paths with labels; images in memory: their pixels and labels in
    order). A dataset of another kind (a user's own class) is counted only."""
    base, indices = _index(dataset)
    chosen = range(len(base)) if indices is None else indices
    digest = hashlib.sha256("\t".join(getattr(base, "classes", ())).encode() + b"\n")
    # Paths: a list, or the readers' FileList (a Sequence sharing one bytes buffer), or a
    # shard set's names of the files it holds, relative to their data root already. Sorted
    # as bytes: UTF-8 keeps the order of the characters, so it is the order of the paths.
    if isinstance(getattr(base, "files", None), Sequence):
        files = base.files
        folder: str | os.PathLike | None = root
        if isinstance(files, ShardSamples):
            files, folder = files.names, None
        digest.update(b"\n".join(sorted(_index_entries(files, base.labels, chosen, folder))))
    elif isinstance(getattr(base, "images", None), np.ndarray):
        selection = np.asarray(list(chosen), dtype=np.int64)
        digest.update(np.ascontiguousarray(base.labels[selection], dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(base.images[selection]).tobytes())
    else:
        return {"images": len(chosen)}
    return {"images": len(chosen), "sha256": digest.hexdigest()}


def dataset_fingerprint(name: str, splits: Mapping[str, Dataset],
                        root: str | os.PathLike) -> dict[str, Any]:
    """The fingerprint of the registered dataset ``name`` under ``root``: for each split
    read, :func:`split_fingerprint`, and the number of classes."""
    first, _ = _index(next(iter(splits.values())))
    return {"name": name, "classes": len(getattr(first, "classes", ())),
            "splits": {split: split_fingerprint(data, root) for split, data in splits.items()}}


def dataset_change(before: Mapping[str, Any] | None, now: Mapping[str, Any] | None
                   ) -> str | None:
    """How the data of provenance record ``now`` differs from that of ``before`` (a resumed
    checkpoint's), split by split: ``"train 96 images then, 97 now"``, or ``"val 32 images,
    other files or labels"`` where only the index hash differs. None where they agree, or
    where either record has no fingerprint to compare (a checkpoint from before they were
    recorded; a dataset class that is only counted)."""
    was = (before or {}).get("dataset") or {}
    is_ = (now or {}).get("dataset") or {}
    changes = []
    for split, then in was.get("splits", {}).items():
        current = is_.get("splits", {}).get(split)
        if current is None:
            continue
        if then.get("images") != current.get("images"):
            changes.append(f"{split} {then.get('images')} images then, "
                           f"{current.get('images')} now")
        elif None not in (then.get("sha256"), current.get("sha256")) and \
                then["sha256"] != current["sha256"]:
            changes.append(f"{split} {current['images']} images, other files or labels")
    return "; ".join(changes) or None


def describe(record: Mapping[str, Any]) -> str:
    """A record as one line: ``vgg-reproduced 0.3.0 at commit 1a2b3c4d5e6f (dirty), torch
    2.14.1, torchvision 0.29.1, CUDA 13.0, cuDNN 91002, on cpu (x86_64); data Digits
    (10 classes): test 360 images, index 5f3e...``."""
    git = record.get("git")
    code = f"{PACKAGE} {record.get('toolkit') or '(version unknown)'}" + (
        f" at commit {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}" if git
        else " (not from a git checkout)")
    line = (f"{code}, torch {record.get('torch')}, torchvision {record.get('torchvision')}, "
            f"CUDA {record.get('cuda') or '-'}, cuDNN {record.get('cudnn') or '-'}, on "
            f"{record.get('device')}")
    dataset = record.get("dataset")
    if dataset:
        splits = ", ".join(f"{split} {info['images']} images"
                           + (f" (index {info['sha256'][:12]})" if "sha256" in info else "")
                           for split, info in dataset["splits"].items())
        line += f"; data {dataset['name']} ({dataset['classes']} classes): {splits}"
    return line
