"""The six networks of Simonyan & Zisserman (2015), Table 1, as one table and one builder.

Layer layout and state-dict keys follow torchvision's ``models/vgg.py`` (``features.N``,
``classifier.0/3/6``) so that torchvision's published weights load with ``strict=True``.
Unlike torchvision, the first FC layer's input follows the training crop
(``512 * (image_size / 32) ** 2``; 512 is the last conv's channels at Table 1's width),
so a 32x32 CIFAR image trains a real VGG natively instead of an upsampled copy; at
``image_size=224`` the two are identical.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Paper notation (Table 1): an int is a 3x3 conv with that many output channels, "cN" a
# 1x1 conv with N channels, "M" a 2x2/2 max-pool, "LRN" local response normalisation.
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A_lrn": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "c256", "M",
          512, 512, "c512", "M", 512, 512, "c512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
VERSIONS = tuple(CONFIGS)
INITS = ("xavier", "xavier_normal", "kaiming", "paper", "from_A")
DOWNSAMPLING = 32  # five stride-2 pools
# torchvision's names of the configs it publishes ImageNet weights for (add "_bn" for BN).
TORCHVISION_NAMES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}

# Krizhevsky et al. (2012): b = a / (k + alpha * sum(a^2))^beta with n=5, alpha=1e-4,
# beta=0.75, k=2. PyTorch divides alpha by n inside the sum, hence alpha * n here.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def local_response_norm() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


def scaled(channels: int, width: float) -> int:
    """A conv layer's channel count in a network ``width`` times as wide as Table 1's."""
    return max(1, round(channels * width))


def conv_layer(item: int | str) -> tuple[int, int]:
    """Table 1's conv entry ``item`` as (output channels, kernel side): an int is a 3x3
    conv, "cN" a 1x1 conv with N channels."""
    return (int(item[1:]), 1) if isinstance(item, str) else (item, 3)


def make_features(config: list[int | str], in_channels: int, batch_norm: bool,
                  width: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(local_response_norm())
        else:
            table_channels, kernel = conv_layer(item)
            out_channels = scaled(table_channels, width)
            layers.append(nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            channels = out_channels
    return nn.Sequential(*layers)


class FullPrecisionScores(nn.Module):
    """Mixed into the layer that outputs the class scores: it computes at its weights'
    precision (fp32) also under autocast. A bf16 score keeps 8 significant bits, so
    near-equal scores round to exact ties, and a tie counts against the model in top-k
    (vgg.metrics), which biased validation and the plateau schedule. Cost: one
    fc_width x classes product in fp32."""

    weight: torch.Tensor  # the Linear's or Conv2d's it is mixed into

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. the meta device
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


class ClassScores(FullPrecisionScores, nn.Linear):
    """``classifier.6``: a Linear (its state-dict keys are unchanged) with fp32 output."""


class DenseClassScores(FullPrecisionScores, nn.Conv2d):
    """The dense form's last 1x1 conv, with fp32 output."""


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int, image_size: int,
                 fc_width: int, dropout: float) -> None:
        super().__init__()
        self.image_size = image_size
        self.features = features
        side = image_size // DOWNSAMPLING
        channels = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
            ClassScores(fc_width, num_classes),
        )
        # Parameter names copied from a trained net A by init="from_A" (Sec. 3.1); with
        # --from_A_fixed_lr the trainer keeps their learning rate undecayed.
        self.copied_from_A: tuple[str, ...] = ()
        # Modules that took pretrained weights when fine-tuning (vgg.pretrained).
        self.pretrained_modules: tuple[str, ...] = ()
        # Keep only each conv stage's input for backward and recompute the rest: about a
        # third more compute for a fraction of the activation memory (the paper's batch of
        # 256 at 224 on a 24 GB GPU).
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"this VGG takes {self.image_size}x{self.image_size} inputs, got "
                f"{tuple(x.shape[-2:])}; use to_dense() for larger images (dense evaluation)")
        if self.activation_checkpointing and torch.is_grad_enabled():
            for stage in self.stages():
                x = checkpoint(stage, x, use_reentrant=False,
                               context_fn=partial(recompute_contexts, stage))
        else:
            x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    def stages(self) -> list[nn.Sequential]:
        """``features`` cut after each max-pool: the five resolution stages."""
        cuts = [i + 1 for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        return [self.features[start:end] for start, end in zip([0] + cuts[:-1], cuts, strict=True)]

    def to_dense(self) -> nn.Sequential:
        """The same weights as a fully-convolutional net (Sec. 3.2): FC1 becomes a conv
        with the final feature map's kernel, FC2/FC3 become 1x1 convs. It maps an image of
        any side >= image_size to a class-score map of shape (N, classes, h, w).
        The conv weights are views of the FC weights, so no memory is duplicated."""
        side = self.image_size // DOWNSAMPLING
        convs = []
        for linear, kernel, kind in zip(self.classifier[::3], (side, 1, 1),
                                        (nn.Conv2d, nn.Conv2d, DenseClassScores), strict=True):
            assert isinstance(linear, nn.Linear)  # classifier.0, .3 and .6
            conv = kind(linear.in_features // (kernel * kernel), linear.out_features, kernel)
            conv.weight = nn.Parameter(linear.weight.view(conv.weight.shape))
            conv.bias = linear.bias
            convs.append(conv)
        fc1, fc2, fc3 = convs
        return nn.Sequential(self.features, fc1, nn.ReLU(inplace=True), fc2,
                             nn.ReLU(inplace=True), fc3).train(self.training)


def recompute_contexts(stage: nn.Module) -> tuple[AbstractContextManager[None],
                                                  AbstractContextManager[None]]:
    """activation checkpointing's (forward, recompute) contexts for ``stage``."""
    return nullcontext(), batch_norm_statistics_restored(stage)


@contextmanager
def batch_norm_statistics_restored(module: nn.Module) -> Iterator[None]:
    """Undo the running-statistics update of a recomputed forward, so that activation
    checkpointing counts each batch once, as the plain forward does."""
    saved = [(buffer, buffer.clone()) for m in module.modules()
             if isinstance(m, nn.BatchNorm2d) for buffer in m.buffers()]
    try:
        yield
    finally:  # also when checkpoint stops the recompute early, by raising through us
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def init_weights(model: nn.Module, scheme: str, std: float = 1e-2) -> None:
    """Random initialisation. ``paper`` is Sec. 3.1's zero-mean normal with zero biases;
    the paper says "variance 1e-2" but its Caffe lineage (and AlexNet) use std 1e-2, which
    is our default: pass ``std=0.1`` for the literal reading. ``kaiming`` is torchvision's."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(module.weight)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(module.weight)
            elif scheme == "kaiming" and isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:  # "paper", and kaiming's Linear layers (torchvision draws those the same way)
                nn.init.normal_(module.weight, 0.0, std)
            assert module.bias is not None  # every conv and linear layer of a VGG has one
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def conv_stages(features: nn.Sequential) -> list[list[list[str]]]:
    """Per stage between pools, each conv layer as the module names of the conv and its BN."""
    stages: list[list[list[str]]] = [[]]
    for name, module in features.named_children():
        if isinstance(module, nn.MaxPool2d):
            stages.append([])
        elif isinstance(module, nn.Conv2d):
            stages[-1].append([f"features.{name}"])
        elif isinstance(module, nn.BatchNorm2d):
            stages[-1][-1].append(f"features.{name}")
    return stages[:-1]


def layers_initialised_from_A(model: VGG) -> list[str]:
    """Module names that Sec. 3.1 initialises from net A: "the first four convolutional
    layers and the last three fully-connected layers". Net A's first four convs are the
    first conv of stages 1 and 2 and both convs of stage 3; they go to the layers in the
    same positions of the deeper net, the only mapping under which the shapes agree."""
    stages = conv_stages(model.features)
    convs = [name for stage, index in ((0, 0), (1, 0), (2, 0), (2, 1))
             for name in stages[stage][index]]
    return convs + ["classifier.0", "classifier.3", "classifier.6"]


def copy_from_A(model: VGG, a_state: Mapping[str, torch.Tensor], batch_norm: bool,
                in_channels: int, num_classes: int, fc_width: int, width: float
                ) -> tuple[str, ...]:
    """Copy Sec. 3.1's layers from net A's state dict into ``model``; return the names
    of the parameters copied."""
    with torch.device("meta"):
        reference_a = build_vgg("A", num_classes=num_classes, in_channels=in_channels,
                                image_size=model.image_size, batch_norm=batch_norm,
                                init=None, fc_width=fc_width, width=width)
    expected = {k: tuple(v.shape) for k, v in reference_a.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in a_state.items()}
    if given != expected:
        differing = sorted(set(expected) ^ set(given)) or sorted(
            k for k in expected if expected[k] != given[k])
        raise ValueError(
            "init='from_A' needs a trained config-A network with the same in_channels, "
            f"num_classes, image_size, fc_width, width and batch_norm ({in_channels}, "
            f"{num_classes}, {model.image_size}, {fc_width}, {width}, {batch_norm}); this "
            "checkpoint differs at "
            f"{differing[:4]}{' ...' if len(differing) > 4 else ''}")
    # Copy from A by the same stage positions, translated to A's own module names.
    a_layers = layers_initialised_from_A(reference_a)
    own_layers = layers_initialised_from_A(model)
    state = model.state_dict()
    copied = []
    for own, theirs in zip(own_layers, a_layers, strict=True):
        for suffix in model.get_submodule(own).state_dict():
            state[f"{own}.{suffix}"] = a_state[f"{theirs}.{suffix}"]
        copied += [f"{own}.{p}" for p, _ in model.get_submodule(own).named_parameters()]
    model.load_state_dict(state)
    return tuple(copied)


def build_vgg(version: str, *, num_classes: int = 1000, in_channels: int = 3,
              image_size: int = 224, batch_norm: bool = False, init: str | None = "xavier",
              init_std: float = 1e-2, a_state_dict: Mapping[str, torch.Tensor] | None = None,
              fc_width: int = 4096, dropout: float = 0.5, width: float = 1.0) -> VGG:
    """Build config ``version`` of Table 1, its conv layers ``width`` times as wide (1: the
    paper's 64-512 channels; a narrower net trains small data on a CPU in minutes, where
    the full one takes hours). ``init=None`` leaves PyTorch's default
    initialisation (for loading weights straight after). ``init="from_A"`` needs
    ``a_state_dict``, a trained config-A model's state dict; the other layers get the
    paper's normal initialisation, and ``model.copied_from_A`` names what was copied."""
    if version not in CONFIGS:
        raise ValueError(f"unknown VGG version {version!r}; valid versions: {', '.join(VERSIONS)}")
    if init is not None and init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid choices: {', '.join(INITS)}")
    if image_size < DOWNSAMPLING or image_size % DOWNSAMPLING:
        raise ValueError(f"image_size must be a positive multiple of {DOWNSAMPLING} "
                         f"(five 2x2 pools), got {image_size}")
    if (init == "from_A") != (a_state_dict is not None):
        raise ValueError("init='from_A' and a_state_dict go together: pass a trained "
                         "config-A state dict with init='from_A', and only then")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width}")
    model = VGG(make_features(CONFIGS[version], in_channels, batch_norm, width),
                num_classes, image_size, fc_width, dropout)
    if init == "from_A":
        init_weights(model, "paper", init_std)
        assert a_state_dict is not None  # checked above: from_A comes with it
        model.copied_from_A = copy_from_A(model, a_state_dict, batch_norm, in_channels,
                                          num_classes, fc_width, width)
    elif init is not None:
        init_weights(model, init, init_std)
    return model


def network_bytes(model_args: Mapping, input_side: int | None = None) -> int:
    """About how much memory the network of ``model_args`` (build_vgg's keyword arguments,
    of the right types) takes to hold and to run on one image of ``input_side`` pixels
    (default: its image size): fp32 weights, the image and the first stage's largest pair
    of feature maps. Counted, not built, so that an absurd size is refused before anything
    of that size is allocated (or a tensor size overflows)."""
    defaults = {name: p.default for name, p in inspect.signature(build_vgg).parameters.items()}
    args = {**defaults, **model_args}
    width, in_channels = args["width"], args["in_channels"]
    weights, channels = 0, in_channels
    for item in CONFIGS[args["version"]]:
        if item in ("M", "LRN"):
            continue
        table_channels, kernel = conv_layer(item)
        out = scaled(table_channels, width)
        # kernel, bias, and BatchNorm's weight, bias, running mean and variance
        weights += channels * out * kernel * kernel + out * (5 if args["batch_norm"] else 1)
        channels = out
    fc, side = args["fc_width"], args["image_size"] // DOWNSAMPLING
    weights += (channels * side * side + 1) * fc + (fc + 1) * fc + (fc + 1) * args["num_classes"]
    side = max(input_side or args["image_size"], args["image_size"])
    activations = (in_channels + 2 * scaled(64, width)) * side * side
    return 4 * (weights + activations)
