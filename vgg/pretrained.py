"""Pretrained VGG weights: reading them from wherever they are, and starting a network for
another task from them (fine-tuning).

Where weights come from (:func:`read_weights`), train.py's ``--init_from`` for files and
``--weights`` for names:

- a checkpoint of this toolkit, or a run directory (its ``best.pt``);
- a torchvision VGG state dict file (``vgg16-397923af.pth``, ``vgg11_bn-8a719046.pth``, any
  bare state dict with torchvision's keys, such as ``python -m vgg.export`` writes);
- a Hub-style folder (``config.json`` with ``model_args`` and the preprocessing record, beside
  ``model.safetensors``) or a ``.safetensors`` file with that metadata, as ``python -m
  vgg.export`` writes them (reading them needs the ``safetensors`` package);
- a torchvision weights name (``VGG16_Weights.IMAGENET1K_V1``, any VGG weights enum), loaded
  through torchvision's own download-and-cache, ``torch.hub.get_dir()/checkpoints/``. Once
  the file is there (downloaded, or copied in by hand on an offline machine) it loads offline.
  (``--init_from NAME`` still takes a name too, as before ``--weights`` existed.)

Everything is read with ``torch.load(weights_only=True)``, safetensors or ``json``: no file
runs code.

What a network for another task takes from them (:func:`load_pretrained`): every layer
whose shape fits. The conv layers always fit (the architecture must be the same: config
and BatchNorm, which never follow the weights: the error names the flags that build
theirs); the rest follows the network the user asked for:

- another class count: the class-score layer (``classifier.6``) keeps its random
  initialisation;
- 1-channel data: the first conv's weights are summed over the RGB input channels, so a
  grey image gives the response the RGB weights give to the same image in grey;
- another image size than the weights' 224 (``--image_size``): FC1 takes a feature map of
  another size and keeps its random initialisation (the small-input head); train at 224 to
  keep FC1 as well. Another ``--fc_width`` likewise renews FC1 and FC2.

The :class:`TransferReport` says what was loaded, adapted and left new, for the trainer to
print. :func:`freeze` and :func:`scale_pretrained_lr` are fine-tuning's two usual ways of
sparing the pretrained layers: frozen, or a lower learning rate.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from vgg.checkpoint import (
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
    load_model_state,
    preprocessing_problem,
    run_checkpoint,
    weights_key,
)
from vgg.configuration import ConfigError
from vgg.errors import UserError, short_repr
from vgg.model import DOWNSAMPLING, TORCHVISION_NAMES, VERSIONS, VGG, build_vgg
from vgg.provenance import PROVENANCE_KEY
from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD

# What `--freeze` may hold still: nothing, the pretrained conv layers, or every layer that
# was loaded (leaving only the new ones, e.g. the class-score layer, to train).
FREEZE_CHOICES = ("none", "features", "pretrained")
WEIGHTS_NAME = re.compile(r"\w+_Weights\.\w+")
# Torchvision's VGGs were trained on 256-pixel resizes, centre-cropped to 224 at test time.
TORCHVISION_TRAIN_SCALE = (256, 256)
# Where an exported state dict carries its preprocessing record: a key of its ``_metadata``.
PREPROCESSING_KEY = "vgg_preprocessing"
# A Hub-style folder (Hugging Face's layout): the network's description beside its tensors.
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass
class PretrainedWeights:
    """A state dict with what is known about it: the :func:`vgg.model.build_vgg` arguments
    that rebuild its network, and the preprocessing its inputs had (the checkpoint's
    ``"preprocessing"`` dict), None where the weights do not record it."""
    state: dict[str, torch.Tensor]
    source: str
    model_args: dict[str, Any]
    preprocessing: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None  # a checkpoint's or export's (vgg/provenance.py)


def vgg_weights_architectures() -> dict[str, dict[str, Any]]:
    """Every torchvision VGG weights name, e.g. ``VGG16_Weights.IMAGENET1K_V1`` (and the
    ``DEFAULT`` aliases), with the architecture of its network: ``{"version": "D",
    "batch_norm": False}``."""
    import torchvision

    names: dict[str, dict[str, Any]] = {}
    for version, base in TORCHVISION_NAMES.items():
        for batch_norm in (False, True):
            enum = torchvision.models.get_model_weights(base + "_bn" * batch_norm)
            names |= {f"{enum.__name__}.{member}": {"version": version, "batch_norm": batch_norm}
                      for member in enum.__members__}
    return names


def vgg_weights_names() -> list[str]:
    """Every torchvision VGG weights name, e.g. ``VGG16_Weights.IMAGENET1K_V1`` (without
    the ``DEFAULT`` aliases)."""
    return [name for name in vgg_weights_architectures() if not name.endswith(".DEFAULT")]


def unknown_weights_name(name: str) -> str:
    """The error for a name that is not a torchvision VGG weights name: the closest one, and
    every one."""
    names = vgg_weights_names()
    close = difflib.get_close_matches(name, names, n=1)
    return (f"{name} is not a torchvision VGG weights name"
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; choose one of {', '.join(names)}")


def read_weights(source: str | os.PathLike) -> PretrainedWeights:
    """The weights that ``source`` names: a run directory, a checkpoint or torchvision state
    dict file, a Hub-style folder or safetensors file, or a torchvision weights name (see the
    module docstring)."""
    path = Path(source)
    if path.is_dir() and ((path / HUB_CONFIG).exists() or (path / HUB_WEIGHTS).exists()):
        return hub_folder_weights(path)
    if path.is_dir():
        path = run_checkpoint(path)
    if path.is_file() and path.suffix == SAFETENSORS_SUFFIX:
        return safetensors_weights(path)
    if path.is_file():
        return weights_from_file(path)
    if WEIGHTS_NAME.fullmatch(str(source)):
        return torchvision_weights(str(source))
    raise CheckpointError(
        f"no file or run directory {source}: pretrained weights are a checkpoint of this "
        "toolkit (or its run directory), a torchvision VGG state dict file such as "
        "vgg16-397923af.pth, or a torchvision weights name such as VGG16_Weights.IMAGENET1K_V1")


def weights_from_file(path: Path) -> PretrainedWeights:
    loaded = load_checkpoint(path)  # checked there, as every command's checkpoints are
    if isinstance(loaded, dict) and "model" in loaded and "model_args" in loaded:
        # A run trained with --ema stands for its average, as in evaluate.py by default.
        return PretrainedWeights(loaded[weights_key(loaded, "auto", str(path))], str(path),
                                 dict(loaded["model_args"]),
                                 loaded.get("preprocessing"), dict(loaded.get("config") or {}),
                                 loaded.get("provenance"))
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        model_args = model_args_of_state(loaded, str(path))
        return PretrainedWeights(loaded, str(path), model_args,
                                 recorded_preprocessing(loaded, model_args, str(path)))
    raise CheckpointError(f"{path} is neither a checkpoint of this toolkit (no 'model' and "
                          "'model_args') nor a state dict of tensors")


def hub_folder_weights(path: Path) -> PretrainedWeights:
    """A Hub-style folder's weights: ``model.safetensors`` as its ``config.json`` describes
    them."""
    for needed in (HUB_CONFIG, HUB_WEIGHTS):
        if not (path / needed).is_file():
            raise CheckpointError(
                f"{path} is not a Hub-style folder of this toolkit: it has no {needed} (python "
                f"-m vgg.export writes {HUB_CONFIG} beside {HUB_WEIGHTS}); export the run "
                "again, or give a checkpoint or run directory")
    try:
        config = json.loads((path / HUB_CONFIG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path / HUB_CONFIG} is not JSON ({error}): the folder was "
                              "damaged or written by something else; export it again") from None
    return described_weights(config, read_safetensors(path / HUB_WEIGHTS)[0], str(path))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and its str -> str metadata."""
    # Optional: only these files need it (the GPU machines' stack lacks it).
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"reading {path} needs the safetensors package: pip install "
                              "safetensors (README, Install)") from None
    try:
        with safe_open(path, "pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except Exception as error:  # safetensors' SafetensorError for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable safetensors file: truncated, corrupt "
                              f"or of another format ({type(error).__name__}: {error})") from None


def safetensors_weights(path: Path) -> PretrainedWeights:
    """A safetensors file described by its own metadata (each value JSON, as ``python -m
    vgg.export`` writes it)."""
    state, strings = read_safetensors(path)
    try:
        metadata = {key: json.loads(value) for key, value in strings.items()}
    except ValueError as error:
        raise CheckpointError(f"{path}'s metadata is not the JSON that python -m vgg.export "
                              f"writes ({error})") from None
    return described_weights(metadata, state, str(path))


def described_weights(config: Any, state: dict[str, torch.Tensor], source: str
                      ) -> PretrainedWeights:
    """Tensors with the metadata that ``python -m vgg.export`` writes beside them (a Hub
    folder's ``config.json``, a safetensors file's metadata): its ``model_args`` must be the
    network that the tensors' shapes give, and it is checked as a checkpoint is."""
    args = config.get("model_args") if isinstance(config, dict) else None
    if not isinstance(args, dict):
        raise CheckpointError(f"{source} does not describe its network: its metadata has no "
                              "'model_args' (python -m vgg.export writes them); export it again")
    shapes = model_args_of_state(state, source)
    differ = [f"{key} {short_repr(args[key])} (the tensors': {value!r})"
              for key, value in shapes.items() if key in args and args[key] != value]
    if differ:
        raise CheckpointError(f"{source}'s model_args do not match its tensors: "
                              f"{'; '.join(differ)}. The metadata belongs to another network; "
                              "export the run again")
    preprocessing, provenance = config.get(PREPROCESSING_KEY), config.get(PROVENANCE_KEY)
    check_checkpoint({"model": state, "model_args": args, "preprocessing": preprocessing,
                      "provenance": provenance}, source)
    return PretrainedWeights(state, source, shapes | args, preprocessing, provenance=provenance)


def recorded_preprocessing(state: dict[str, torch.Tensor], model_args: dict[str, Any],
                           source: str) -> dict[str, Any] | None:
    """The preprocessing record of a bare state dict: the one ``python -m vgg.export`` puts
    in the state dict's ``_metadata`` (where torchvision's strict loading ignores it);
    torchvision's ImageNet preprocessing for a file shaped as torchvision's ImageNet VGGs
    (1000 classes, RGB, 224px); otherwise None: unknown, and said so where it matters."""
    record = getattr(state, "_metadata", {}).get("", {}).get(PREPROCESSING_KEY)
    if record is not None:
        problem = preprocessing_problem(record, model_args)
        if problem is not None:
            raise CheckpointError(f"{source} has an unusable preprocessing record: {problem}")
        return record
    imagenet = torchvision_preprocessing(model_args["num_classes"])
    if (model_args["in_channels"], model_args["image_size"]) == (3, 224) and imagenet["dataset"]:
        return imagenet
    return None


def torchvision_weights(name: str) -> PretrainedWeights:
    """Torchvision's weights by enum name, through its download-and-cache: offline, the
    file must already be in the cache folder that the error names."""
    import torchvision

    if name not in vgg_weights_architectures():
        raise CheckpointError(unknown_weights_name(name))
    weights = torchvision.models.get_weight(name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    was_cached = cached.is_file()
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True,
                                       map_location="cpu")
    except Exception as error:  # offline (URLError), a bad hash or file (RuntimeError), ...
        if was_cached:
            raise CheckpointError(
                f"{cached}, torchvision's cached copy of {name}, is unreadable "
                f"({type(error).__name__}: {error}): delete it to download it again, or "
                f"replace it with a good copy of {weights.url}") from None
        raise CheckpointError(
            f"--weights {name} needs the file {cached.name}, which is not in torchvision's "
            f"cache folder {cached.parent} and could not be downloaded "
            f"({type(error).__name__}: {error}). On an offline machine, download "
            f"{weights.url} elsewhere and put it at {cached} (the folder is "
            "torch.hub.get_dir()/checkpoints; TORCH_HOME moves it), or give the path of the "
            f"file itself (path/to/{cached.name}) where you gave the name") from None
    transform = weights.transforms()
    model_args = model_args_of_state(state, name)
    preprocessing = torchvision_preprocessing(model_args["num_classes"])
    preprocessing |= {"mean": list(transform.mean), "std": list(transform.std)}
    if weights.meta["categories"]:  # None for IMAGENET1K_FEATURES, which has no classifier
        preprocessing["classes"] = list(weights.meta["categories"])
    return PretrainedWeights(state, f"{name} ({cached})", model_args, preprocessing)


def torchvision_preprocessing(num_classes: int) -> dict[str, Any]:
    """What torchvision's ImageNet weights expect: ImageNet's mean/std, PIL's antialiased
    resize to 256, the 224 centre crop; class names when the weights have ImageNet's 1000."""
    import torchvision

    categories = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    imagenet = num_classes == len(categories)
    return {"dataset": "ImageNet" if imagenet else None,
            "classes": list(categories) if imagenet else [str(i) for i in range(num_classes)],
            "in_channels": 3, "image_size": 224, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "train_scale": list(TORCHVISION_TRAIN_SCALE),
            "resize": "antialias"}


def model_args_of_state(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The :func:`vgg.model.build_vgg` arguments of a bare state dict with torchvision's
    keys: config and BatchNorm from the conv layers, the rest from the tensors' shapes."""
    try:
        first_conv, fc1 = state["features.0.weight"], state["classifier.0.weight"]
        scores = state["classifier.6.weight"]
    except KeyError as missing:
        raise CheckpointError(f"{source} is not a VGG state dict (no {missing} tensor)") from None
    width = conv_width(state)
    channels = round(width * 512)  # the last conv's
    side = math.isqrt(fc1.shape[1] // channels)
    if side == 0 or channels * side * side != fc1.shape[1]:
        raise CheckpointError(f"{source}'s FC1 takes {fc1.shape[1]} features, not a "
                              f"{channels} x side x side feature map of a VGG")
    args: dict[str, Any] = {"num_classes": scores.shape[0], "in_channels": first_conv.shape[1],
            "image_size": side * DOWNSAMPLING, "fc_width": fc1.shape[0],
            "width": width}
    features = {k: tuple(v.shape) for k, v in state.items() if k.startswith("features.")}
    for version in VERSIONS:
        for batch_norm in (False, True):
            with torch.device("meta"):
                reference = build_vgg(version, batch_norm=batch_norm, init=None, **args)
            if features == {k: tuple(v.shape) for k, v in reference.state_dict().items()
                            if k.startswith("features.")}:
                return {"version": version, "batch_norm": batch_norm, **args}
    raise CheckpointError(f"{source}'s conv layers match none of Table 1's configurations "
                          f"{', '.join(VERSIONS)} (with or without BatchNorm)")


def preprocessing_of(weights: PretrainedWeights) -> dict[str, Any]:
    """How the weights' inputs were prepared (the checkpoint's ``"preprocessing"`` dict), with
    what older records lack completed: a checkpoint written before it was recorded gets it
    rebuilt from its dataset's spec and config, and numbered classes where the class names
    were not recorded. A bare state dict without a record is refused: guessing its
    normalisation would give other answers than the network's, silently."""
    if weights.preprocessing is None and not weights.config.get("dataset"):
        raise CheckpointError(
            f"{weights.source} records neither its preprocessing (class names, mean/std, "
            "training scale S) nor a dataset to rebuild it from: a state dict exported before "
            "python -m vgg.export recorded it, or written by other code. Export it again from "
            "its checkpoint (python -m vgg.export RUN), or use the checkpoint itself")
    record = weights.preprocessing
    if record is None:
        record = dataset_preprocessing(weights)
    image_size = weights.model_args["image_size"]
    defaults = {"classes": [str(i) for i in range(weights.model_args["num_classes"])],
                "in_channels": weights.model_args["in_channels"], "image_size": image_size,
                "resize": "bilinear", "dataset": weights.config.get("dataset")}
    record = defaults | record
    if record.get("train_scale") is None:
        record["train_scale"] = list(weights.config.get("train_scale") or (
            dataset_preprocessing(weights)["train_scale"]))
    return record


def dataset_preprocessing(weights: PretrainedWeights) -> dict[str, Any]:
    """The normalisation and training scale of the weights' dataset, from its spec: for
    checkpoints written before the preprocessing was recorded."""
    from vgg.data import dataset_spec

    # As the file has it, unchecked: a missing or odd name fails in dataset_spec, below.
    name: Any = weights.config.get("dataset")
    try:
        spec = dataset_spec(name, weights.config.get("data_root"))
    except (ValueError, AttributeError, UserError) as error:
        raise CheckpointError(
            f"{weights.source} predates recorded preprocessing, so its normalisation comes "
            f"from its dataset ({name}), which is unavailable: {error}") from None
    image_size = weights.model_args["image_size"]
    return {"dataset": spec.name, "in_channels": spec.in_channels, "mean": list(spec.mean),
            "std": list(spec.std),
            "train_scale": list(weights.config.get("train_scale")
                                or spec.train_scale_at(image_size))}


def describe_architecture(model_args: dict[str, Any]) -> str:
    version = model_args["version"]
    torchvision_name = TORCHVISION_NAMES.get(version)
    if torchvision_name and model_args.get("batch_norm"):
        torchvision_name += "_bn"
    width = model_args.get("width", 1.0)
    if width != 1.0:
        torchvision_name = None
    return (f"config {version} {'with' if model_args.get('batch_norm') else 'without'} "
            f"BatchNorm" + (f" at {width:g}x the channels" if width != 1.0 else "")
            + (f" (torchvision's {torchvision_name})" if torchvision_name else ""))


def wrong_architecture(source: str, source_args: dict[str, Any],
                       width_here: float = 1.0) -> str:
    """The error for weights of another architecture than the network's: the flags that
    build theirs (the architecture is always the user's explicit choice). ``--width`` is
    named where either side is narrower than Table 1."""
    width = source_args.get("width", 1.0)
    return (f"{source} holds {describe_architecture(source_args)}, whose conv layers this "
            f"network's cannot take: build it as --model_version {source_args['version']} "
            f"--batch_norm {str(source_args['batch_norm']).lower()}"
            + (f" --width {width:g}" if 1.0 != width or width_here != 1.0 else ""))


def conv_width(state: dict[str, torch.Tensor]) -> float:
    """The --width of a VGG state dict: its last conv's channels over Table 1's 512. Last
    by layer index, not by key order: safetensors files keep their keys sorted as text."""
    convs = {int(k.split(".")[1]): v for k, v in state.items()
             if k.startswith("features.") and v.ndim == 4}
    return convs[max(convs)].shape[0] / 512


def model_from_weights(weights: PretrainedWeights) -> VGG:
    """The network the weights were trained as, loaded strictly (prediction, export)."""
    model = build_vgg(**weights.model_args, init=None)
    load_model_state(model, weights.state, weights.source)
    return model


# ------------------------------------------------------------------------ transfer


@dataclass
class TransferReport:
    """Which modules of the network (``features.0``, ``classifier.6``, ...) took the
    pretrained weights as they were, which were adapted, and which keep their random
    initialisation, each with the reason."""
    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)
    # The normalisation the weights were trained with (mean, std), where known: fine-tuning
    # should feed its images the same way.
    normalization: tuple[list[float], list[float]] | None = None

    @property
    def pretrained_modules(self) -> list[str]:
        return self.loaded + list(self.adapted)

    def __str__(self) -> str:
        features = [m for m in self.loaded if m.startswith("features.")]
        others = [m for m in self.loaded if m not in features]
        lines = [f"pretrained weights from {self.source}: loaded {len(features)} layers of "
                 f"features (conv, BatchNorm){''.join(', ' + m for m in others)}"]
        lines += [f"  adapted {name}: {why}" for name, why in self.adapted.items()]
        lines += [f"  new (random init) {name}: {why}" for name, why in self.new.items()]
        if self.normalization is None:
            lines.append("  the weights record no input normalisation (mean/std): the new "
                         "data's own is used, not the one they were trained with")
        return "\n".join(lines)


def modules_of(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """State-dict keys grouped by the module that owns them, in order."""
    modules: dict[str, list[str]] = {}
    for key in state:
        modules.setdefault(key.rsplit(".", 1)[0], []).append(key)
    return modules


def why_new(module: str, own: torch.Size, theirs: torch.Size, image_size: int,
            source_image_size: int) -> str:
    """Why a classifier layer of another shape cannot take the pretrained weights."""
    if module == "classifier.6" and own[0] != theirs[0]:
        return f"{own[0]} classes here, {theirs[0]} in the weights"
    if module == "classifier.0" and own[1] != theirs[1]:
        return (f"this network's {image_size}px inputs give FC1 {own[1]} features, the "
                f"weights' {source_image_size}px {theirs[1]} (--image_size "
                f"{source_image_size} keeps FC1)")
    return f"shape {tuple(own)} here, {tuple(theirs)} in the weights (another --fc_width)"


def load_pretrained(model: VGG, weights: PretrainedWeights) -> TransferReport:
    """Copy every layer of ``weights`` that fits ``model`` (see the module docstring) and
    report what was loaded, adapted and left new. Raises CheckpointError when the conv
    layers are of another architecture."""
    source_args = weights.model_args
    own_state = model.state_dict()
    features = [k for k in own_state if k.startswith("features.")]
    arch_differs = ({k for k in weights.state if k.startswith("features.")} != set(features)
                    or any(weights.state[k].shape != own_state[k].shape for k in features
                           if k != "features.0.weight")
                    or weights.state["features.0.weight"].shape[0]
                    != own_state["features.0.weight"].shape[0])
    if arch_differs:
        raise CheckpointError(wrong_architecture(weights.source, source_args,
                                                 width_here=conv_width(own_state)))
    preprocessing = weights.preprocessing or {}
    report = TransferReport(weights.source, normalization=(
        (list(preprocessing["mean"]), list(preprocessing["std"]))
        if "mean" in preprocessing else None))
    new_state = dict(own_state)
    for module, keys in modules_of(own_state).items():
        theirs = {k: weights.state[k] for k in keys if k in weights.state}
        if len(theirs) < len(keys):
            report.new[module] = "absent from the weights"
        elif not all(bool(torch.isfinite(v).all()) for v in theirs.values()
                     if v.is_floating_point()):
            report.new[module] = ("the weights hold non-finite values there (torchvision's "
                                  "IMAGENET1K_FEATURES ships no classifier)")
        elif module == "features.0" and theirs[f"{module}.weight"].shape != own_state[
                f"{module}.weight"].shape:
            new_state.update(theirs)
            new_state[f"{module}.weight"] = adapt_input_channels(
                theirs[f"{module}.weight"], own_state[f"{module}.weight"].shape[1],
                weights.source)
            report.adapted[module] = "summed over the weights' RGB input channels (grey input)"
        elif any(v.shape != own_state[k].shape for k, v in theirs.items()):
            report.new[module] = why_new(module, own_state[f"{module}.weight"].shape,
                                         theirs[f"{module}.weight"].shape, model.image_size,
                                         source_args["image_size"])
        else:
            new_state.update(theirs)
            report.loaded.append(module)
    model.load_state_dict(new_state)
    return report


def adapt_input_channels(weight: torch.Tensor, in_channels: int, source: str) -> torch.Tensor:
    """The first conv's RGB weights for 1-channel input: their sum over the input channels
    (a grey image repeated as R = G = B gives exactly the RGB conv's response)."""
    if in_channels != 1 or weight.shape[1] != 3:
        raise CheckpointError(f"{source}'s first conv takes {weight.shape[1]} input channels, "
                              f"this network {in_channels}: only RGB weights for 1-channel "
                              "data are adapted (summed over RGB)")
    return weight.sum(1, keepdim=True)


# ------------------------------------------------------------------------ fine-tuning


def frozen_in_eval(module: nn.Module, args: tuple) -> None:
    """A frozen BatchNorm layer normalises with its pretrained statistics and never updates
    them, whatever ``model.train()`` set."""
    module.training = False


def freeze(model: VGG, report: TransferReport, part: str) -> list[str]:
    """Stop training part of the pretrained layers (``--freeze``): ``features`` (the
    pretrained conv layers), ``pretrained`` (every pretrained layer) or ``none``. Their
    parameters get ``requires_grad=False``, which the optimizer's parameter groups skip;
    their BatchNorm layers stay in eval mode. Returns the frozen parameters' names."""
    if part not in FREEZE_CHOICES:
        raise ConfigError(f"--freeze takes one of {', '.join(FREEZE_CHOICES)}, got {part!r}")
    if part == "none":
        return []
    modules = [m for m in report.pretrained_modules
               if part == "pretrained" or m.startswith("features.")]
    frozen = []
    for name in modules:
        module = model.get_submodule(name)
        for param_name, param in module.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{name}.{param_name}")
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_pre_hook(frozen_in_eval)
    return frozen


def pretrained_parameters(model: VGG, report: TransferReport) -> list[nn.Parameter]:
    modules = set(report.pretrained_modules)
    return [p for name, p in model.named_parameters() if name.rsplit(".", 1)[0] in modules]
