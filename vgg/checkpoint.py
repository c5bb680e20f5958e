"""Checkpoints: written atomically, read with ``weights_only=True``, errors a user can act on.

A checkpoint is a dict holding at least ``model`` (the state dict) and ``model_args`` (the
keyword arguments of :func:`vgg.build_vgg` that rebuild the network), so that any tool can
reconstruct the model without the run's config; the trainer adds its own state beside them
(vgg/train_state.py), ``preprocessing`` (:func:`preprocessing_record`): the input the
network expects, so that it can be evaluated without the training data, and
``provenance`` (vgg/provenance.py): the code, libraries, device and data that trained it.
Checkpoints written before either record load as before.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from vgg.atomic import RecordingWriter, reason, replace_atomically
from vgg.errors import UserError, short_repr
from vgg.model import DOWNSAMPLING, VERSIONS, VGG, build_vgg, network_bytes
from vgg.provenance import FIELDS as PROVENANCE_FIELDS


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, unwritable or of another network."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write through a temporary file and an atomic rename: a crash, a kill or a full disk
    mid-write leaves the previous checkpoint intact."""
    try:
        with replace_atomically(path, "wb") as f:
            writer = RecordingWriter(f)
            try:
                # torch.save needs only write() and flush(); its annotation asks for IO[bytes].
                torch.save(state, writer)  # type: ignore[arg-type]
            except RuntimeError:  # torch's zip writer hides the OSError of a failed write
                if writer.error is None:
                    raise
                raise writer.error from None
    except OSError as error:
        raise CheckpointError(f"could not write the checkpoint {path}: {reason(error)}. The "
                              "previous checkpoints in its folder are kept; free space (or fix "
                              "the folder) and continue with --resume") from None


# build_vgg's arguments that a checkpoint records, with the type each must have.
MODEL_ARGS = {"version": str, "num_classes": int, "in_channels": int, "image_size": int,
              "batch_norm": bool, "fc_width": int, "dropout": float, "width": float}
RESIZES = ("bilinear", "antialias")
# data.pkl of any checkpoint is a few KB to a few MB; a larger one is not a checkpoint.
MAX_PICKLE_BYTES = 256 * 2**20


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def model_args_problem(args: Any) -> str | None:
    """What is wrong with a checkpoint's ``model_args`` (None: nothing): each entry is
    checked for its type before its value is looked at, so a crafted one cannot hang or
    crash the check."""
    if not isinstance(args, dict):
        return f"its 'model_args' entry is a {type(args).__name__}, not a dict"
    unknown = [k for k in args if k not in MODEL_ARGS]
    if unknown:
        return (f"its 'model_args' has unknown entries {short_repr(unknown)} (known: "
                f"{', '.join(MODEL_ARGS)})")
    for key, kind in MODEL_ARGS.items():
        value = args.get(key)
        if value is None and key != "version":
            continue
        if not (is_number(value) if kind is float else is_integer(value) if kind is int
                else isinstance(value, kind)):
            return (f"its model_args['{key}'] is {short_repr(value)}, expected a "
                    f"{kind.__name__} value")
    if args["version"] not in VERSIONS:
        return (f"its model_args['version'] {short_repr(args['version'])} is none of Table "
                f"1's {', '.join(VERSIONS)}")
    for key in ("num_classes", "in_channels", "fc_width", "image_size"):
        if key in args and args[key] < 1:
            return f"its model_args['{key}'] is {args[key]}, not a positive count"
    if args.get("image_size", DOWNSAMPLING) % DOWNSAMPLING:
        return (f"its model_args['image_size'] {args['image_size']} is not a multiple of "
                f"{DOWNSAMPLING} (five 2x2 pools)")
    if not 0 <= args.get("dropout", 0) < 1:
        return f"its model_args['dropout'] {args['dropout']} is not in [0, 1)"
    width = args.get("width", 1.0)
    if not (math.isfinite(width) and width > 0):
        return f"its model_args['width'] {width} is not a positive width (1: Table 1's)"
    return None


def train_scale_problem(scale: Any, image_size: int) -> str | None:
    """What is wrong with a recorded training scale S ([Smin, Smax], or S): two whole
    numbers from the crop size up, Smin <= Smax."""
    values = [scale] if is_integer(scale) else scale
    if not (isinstance(values, (list, tuple)) and len(values) in (1, 2)
            and all(is_integer(v) for v in values)):
        return f"its training scale {short_repr(scale)} is not S or [Smin, Smax]"
    if values[0] < image_size or values[0] > values[-1]:
        return (f"its training scale {list(values)} is not S or Smin <= Smax of at least the "
                f"network's image size {image_size} (the training crop is cut from it)")
    return None


def preprocessing_problem(record: Any, args: dict[str, Any]) -> str | None:
    """What is wrong with a ``preprocessing`` record (see :func:`preprocessing_record`) for
    the network of ``args``: a finite mean and a positive std for each input channel and,
    where recorded (older records lack them), a class name for each class, a training
    scale, a known resampling."""
    if not isinstance(record, dict):
        return f"its 'preprocessing' entry is a {type(record).__name__}, not a dict"
    channels, classes = args.get("in_channels", 3), args.get("num_classes", 1000)
    for key in ("mean", "std"):
        values = record.get(key)
        if not (isinstance(values, (list, tuple)) and len(values) == channels
                and all(is_number(v) and math.isfinite(v) for v in values)):
            return (f"its preprocessing {key} {short_repr(values)} is not {channels} finite "
                    f"numbers, one per input channel")
    if min(record["std"]) <= 0:
        return f"its preprocessing std {record['std']} is not positive (inputs are divided by it)"
    names = record.get("classes", [""] * classes)  # older records hold mean and std only
    if not (isinstance(names, (list, tuple)) and len(names) == classes
            and all(isinstance(n, str) for n in names)):
        return (f"its preprocessing classes {short_repr(names)} are not {classes} class names, "
                "one per class the network scores")
    image_size = args.get("image_size", 224)
    for key, wanted in (("in_channels", channels), ("image_size", image_size)):
        if key in record and record[key] != wanted:
            return (f"its preprocessing {key} {short_repr(record[key])} differs from its "
                    f"network's {wanted}")
    if record.get("resize", "bilinear") not in RESIZES:
        return (f"its preprocessing resize {short_repr(record['resize'])} is none of "
                f"{', '.join(RESIZES)}")
    if not isinstance(record.get("dataset", ""), (str, type(None))):
        return f"its preprocessing dataset {short_repr(record['dataset'])} is not a name"
    if record.get("train_scale") is not None:
        return train_scale_problem(record["train_scale"], image_size)
    return None


def config_problem(config: Any, image_size: int) -> str | None:
    """What is wrong with the entries of a checkpoint's ``config`` that the commands read."""
    if not isinstance(config, dict):
        return f"its 'config' entry is a {type(config).__name__}, not a dict"
    for key in ("dataset", "data_root"):
        if not isinstance(config.get(key), (str, type(None))):
            return f"its config {key} {short_repr(config[key])} is not a name"
    fraction = config.get("val_fraction")
    if fraction is not None and not (is_number(fraction) and 0 < fraction < 1):
        return f"its config val_fraction {short_repr(fraction)} is not a fraction in (0, 1)"
    if config.get("train_scale") is not None:
        return train_scale_problem(config["train_scale"], image_size)
    return None


# Versions, device names and hashes are short; a longer text is not a provenance record's.
MAX_PROVENANCE_TEXT = 200


def is_hex(value: Any, digits: int) -> bool:
    """Whether ``value`` is a lower-case hexadecimal digest of ``digits`` digits."""
    return (isinstance(value, str) and len(value) == digits
            and all(c in "0123456789abcdef" for c in value))


def split_fingerprint_ok(info: Any) -> bool:
    """A split's entry of a dataset fingerprint: its image count and (where the toolkit
    could hash its index) the SHA-256 digest of it."""
    return (isinstance(info, dict) and is_integer(info.get("images"))
            and ("sha256" not in info or is_hex(info["sha256"], 64)))


def provenance_problem(record: Any) -> str | None:
    """What is wrong with a ``provenance`` record (vgg/provenance.py): its fields of the
    types it writes, texts short, the git state a commit hash and a dirty flag, the dataset
    fingerprint a name, a class count and a count (and digest) per split. Fields it does
    not know are left alone (a newer toolkit's)."""
    if not isinstance(record, dict):
        return f"its 'provenance' entry is a {type(record).__name__}, not a dict"
    for key, kinds in PROVENANCE_FIELDS.items():
        value = record.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool) or (
                isinstance(value, str) and len(value) > MAX_PROVENANCE_TEXT):
            return f"its provenance {key} {short_repr(value)} is not what a toolkit records"
    git, dataset = record.get("git"), record.get("dataset")
    if git is not None and not (is_hex(git.get("commit"), 40)
                                and isinstance(git.get("dirty"), bool)):
        return f"its provenance git {short_repr(git)} is not a commit hash and a dirty flag"
    if dataset is not None and not (
            isinstance(dataset.get("name"), str) and is_integer(dataset.get("classes"))
            and isinstance(dataset.get("splits"), dict)
            and all(isinstance(split, str) and split_fingerprint_ok(info)
                    for split, info in dataset["splits"].items())):
        return (f"its provenance dataset {short_repr(dataset)} is not a fingerprint (a name, "
                "a class count, and per split an image count and index digest)")
    return None


def weights_problem(state: Mapping[str, Any]) -> str | None:
    """What is wrong with the kinds of a state dict's tensors: floating-point weights (not
    integers, which would have been truncated, nor complex numbers), integer counters."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # model_state and load_model_state name what is not a tensor
        counter = key.endswith("num_batches_tracked")
        if value.is_complex() or value.is_floating_point() == counter:
            wanted = "an integer count" if counter else "floating-point weights"
            return f"its tensor {short_repr(key)} holds {value.dtype}, not {wanted}"
    return None


def ema_problem(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's average of the weights (vgg/ema.py), where it has
    one: a state dict (checked like ``model``), the count of its updates, and the decay
    its config records, in (0, 1)."""
    if "model_ema" not in checkpoint:
        return None
    if not isinstance(checkpoint["model_ema"], Mapping):
        return f"its 'model_ema' entry is a {type(checkpoint['model_ema']).__name__}, not weights"
    updates = checkpoint.get("ema_updates")
    if not (is_integer(updates) and 0 <= updates < 2**63):
        return f"its 'ema_updates' {short_repr(updates)} is not a count of updates"
    decay = (checkpoint.get("config") or {}).get("ema")
    if decay is not None and not (is_number(decay) and 0 < decay < 1):
        return f"its config ema {short_repr(decay)} is not a decay in (0, 1)"
    return None


WEIGHTS = ("auto", "ema", "raw")


def weights_key(checkpoint: dict[str, Any], which: str, source: str) -> str:
    """The entry of a checkpoint of this toolkit holding the weights ``which`` names:
    ``raw`` the trained weights (``model``), ``ema`` their average (``model_ema``, --ema),
    ``auto`` the average where there is one: with --ema, best.pt is the best by the
    average's figure."""
    if which == "ema" and "model_ema" not in checkpoint:
        raise CheckpointError(f"{source} holds no average of the weights (it was trained "
                              "without --ema): evaluate its weights with --weights raw or auto")
    return "model_ema" if which != "raw" and "model_ema" in checkpoint else "model"


def check_checkpoint(checkpoint: dict[str, Any], source: str) -> None:
    """The one validation of a checkpoint's contents that every command applies when it
    reads one (in :func:`load_checkpoint`): model_args that build a VGG of a size this
    machine can hold, a preprocessing record, config and provenance of the right types and
    values, and weights of the right kinds. Shapes are checked against the network when it is loaded
    (:func:`load_model_state`), finiteness too."""
    args = checkpoint.get("model_args")
    problem = model_args_problem(args)
    if problem is None:
        assert isinstance(args, dict)  # model_args_problem refuses anything else
        image_size = args.get("image_size", 224)
        preprocessing = checkpoint.get("preprocessing")
        problem = ((preprocessing_problem(preprocessing, args) if preprocessing is not None
                    else None)
                   or (config_problem(checkpoint["config"], image_size)
                       if checkpoint.get("config") is not None else None)
                   or (provenance_problem(checkpoint["provenance"])
                       if checkpoint.get("provenance") is not None else None)
                   or next(filter(None, (weights_problem(checkpoint[key])
                                         for key in ("model", "model_ema")
                                         if isinstance(checkpoint.get(key), Mapping))), None)
                   or ema_problem(checkpoint))
    if problem is None:
        assert isinstance(args, dict)  # as above: model_args_problem passed it
        # Evaluated at up to the largest training scale (dense evaluation: the whole image).
        scale = ((preprocessing or {}).get("train_scale")
                 or (checkpoint.get("config") or {}).get("train_scale") or image_size)
        needed = network_bytes(args, max(scale) if isinstance(scale, (list, tuple)) else scale)
        if needed > total_memory():
            problem = (f"its model_args {short_repr(args)} describe a network that needs about "
                       f"{needed / 2**30:.3g} GiB to evaluate one image, more than this "
                       f"machine's {total_memory() / 2**30:.3g} GiB")
    if problem is not None:
        raise CheckpointError(f"{source} is not a usable checkpoint of this toolkit: {problem}. "
                              "It was damaged or written by something else; use another "
                              "checkpoint of the run (last.pt, best.pt, epoch_*.pt)")


class _Anything:
    """What a global named in a pickle stands for while only its plain entries are read."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class RecordReader(pickle.Unpickler):
    """Reads torch.save's ``data.pkl`` without its tensors: dicts, lists, numbers and
    strings as they are, every tensor, storage or other object an inert placeholder, so
    nothing of the file runs and nothing large is read."""

    def find_class(self, module: str, name: str) -> Any:
        return collections.OrderedDict if (module, name) == ("collections", "OrderedDict") \
            else _Anything

    def persistent_load(self, pid: Any) -> None:
        return None


def declared_size_problem(path: Path) -> str | None:
    """What is wrong with the sizes a compressed checkpoint's zip entries declare (None:
    nothing, or not compressed): torch.save stores its entries uncompressed, so what it
    reads is at most the file's size; a recompressed file can unpack to far more (a few MB
    to gigabytes of zeros). Its declared sizes are checked against the network its
    model_args describe before any entry is unpacked, except the record itself."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
        if all(e.compress_type == zipfile.ZIP_STORED for e in entries):
            return None
        declared = sum(e.file_size for e in entries)
        records = [e for e in entries if e.filename.rsplit("/", 1)[-1] == "data.pkl"]
        if len(records) != 1 or records[0].file_size > MAX_PICKLE_BYTES:
            return (f"it is a compressed zip declaring {declared / 2**20:.1f} MiB, without one "
                    "record")
        try:
            record = RecordReader(io.BytesIO(archive.read(records[0]))).load()
        except Exception as error:  # any damage to the record
            return f"its record cannot be read ({type(error).__name__})"
    args = record.get("model_args") if isinstance(record, dict) else None
    if model_args_problem(args) is None:
        assert isinstance(args, dict)  # model_args_problem refuses anything else
        # Weights, optimizer momentum and more, at up to double precision, plus the rest.
        allowed, what = 4 * network_bytes(args) + 64 * 2**20, f"its network ({short_repr(args)})"
    else:
        allowed, what = total_memory() // 2, "half this machine's memory"
    if declared > allowed:
        return (f"it is compressed, and its entries declare {declared / 2**20:.1f} MiB once "
                f"unpacked, more than {what} can take (about {allowed / 2**20:.1f} MiB): not "
                "unpacked")
    return None


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The dict saved at ``path``, checked (:func:`check_checkpoint`) when it is a checkpoint
    of this toolkit, and its tensors' kinds when it is a bare state dict. With ``mmap`` the
    tensors are mapped, not read (or checked): cheap when only the small entries (the step)
    are wanted."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    problem = declared_size_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path} is not a usable checkpoint: {problem}. It was damaged "
                              "or crafted; use another checkpoint")
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
    if mmap:
        return checkpoint
    if "model_args" in checkpoint:
        check_checkpoint(checkpoint, str(path))
    else:
        problem = weights_problem(checkpoint)
        if problem is not None:
            raise CheckpointError(f"{path} is not a usable state dict: {problem}")
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


def load_model_state(model: nn.Module, state: object, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line reason instead of torch's dump; the
    whole network is loaded, so weights of the wrong kind or non-finite ones are refused."""
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
    problem = weights_problem(state)
    if problem is not None:
        raise CheckpointError(f"{source} is not usable: {problem}")
    nonfinite = next((k for k, v in state.items()
                      if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if nonfinite is not None:
        raise CheckpointError(
            f"{source} holds non-finite weights (NaN or inf in {nonfinite}): the run had "
            "diverged when it was saved, and every output of the network would be NaN. Use an "
            "earlier checkpoint of the run (an epoch_*.pt), or train again with a lower --lr")
    model.load_state_dict(state)


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint",
                          weights: str = "auto") -> VGG:
    """The network of a checkpoint of this toolkit (checked by :func:`check_checkpoint`
    when it was loaded), with the weights ``weights`` names (:func:`weights_key`)."""
    if not isinstance(checkpoint.get("model_args"), dict) or "model" not in checkpoint:
        raise CheckpointError(f"{source} has no 'model'/'model_args': not a checkpoint of "
                              "this toolkit (for torchvision .pth weights use evaluate.py "
                              "--torchvision_weights)")
    model = build_vgg(**checkpoint["model_args"], init=None)
    load_model_state(model, checkpoint[weights_key(checkpoint, weights, source)], source)
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
