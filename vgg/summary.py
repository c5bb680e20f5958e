"""Per-layer table of a VGG: output shape, parameters, multiply-accumulates, receptive field.

    python -m vgg.summary --model_version D [--image_size 224] [--batch_norm true]

The network is built on PyTorch's meta device, so even config E at 224 costs no memory
and no compute; shapes come from a real forward pass through the real modules.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from vgg import configuration
from vgg.configuration import ConfigError
from vgg.errors import run_cli
from vgg.model import VERSIONS, VGG, build_vgg

# Table 2 of the paper, millions of parameters at 1000 classes.
PAPER_PARAMS_M = {"A": 133, "A_lrn": 133, "B": 133, "C": 134, "D": 138, "E": 144}


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    receptive_field: int | None  # in input pixels; None once the layers are fully connected


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"conv{module.kernel_size[0]}x{module.kernel_size[1]}"
    return type(module).__name__


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return output[0].numel() * module.in_channels * kernel_h * kernel_w // module.groups
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def summarize(model: VGG, in_channels: int) -> list[LayerRow]:
    """One row per leaf module, for a single input image at the model's image size."""
    rows: list[LayerRow] = []
    receptive_field, jump = 1, 1  # jump: input pixels between adjacent output positions
    hooks = []

    def record(name: str):
        def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            nonlocal receptive_field, jump
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                kernel = module.kernel_size
                kernel = kernel[0] if isinstance(kernel, tuple) else kernel
                stride = module.stride
                stride = stride[0] if isinstance(stride, tuple) else stride
                receptive_field += (kernel - 1) * jump
                jump *= stride
            in_features = name.startswith("features")
            rows.append(LayerRow(name, layer_kind(module), tuple(output.shape[1:]),
                                 sum(p.numel() for p in module.parameters()),
                                 layer_macs(module, output),
                                 receptive_field if in_features else None))
        return hook

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        model(torch.empty(1, in_channels, model.image_size, model.image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def format_table(rows: list[LayerRow], version: str, num_classes: int) -> str:
    lines = [f"{'layer':<16}{'type':<20}{'output':>16}{'params':>14}{'MACs':>16}{'RF':>6}"]
    for row in rows:
        shape = "x".join(map(str, row.output_shape))
        field = "" if row.receptive_field is None else str(row.receptive_field)
        lines.append(f"{row.name:<16}{row.kind:<20}{shape:>16}{row.params:>14,}"
                     f"{row.macs:>16,}{field:>6}")
    params = sum(r.params for r in rows)
    macs = sum(r.macs for r in rows)
    paper = (f"  (paper Table 2: {PAPER_PARAMS_M[version]}M at 1000 classes)"
             if num_classes == 1000 else "")
    lines += [f"total params {params:,} = {params / 1e6:.1f}M{paper}",
              f"total multiply-accumulates {macs:,} = {macs / 1e9:.2f} G"]
    return "\n".join(lines)


@dataclass
class SummaryConfig:
    model_version: str = field(default="D", metadata={"choices": VERSIONS})  # Table 1 config
    image_size: int = 224  # input side (a multiple of 32)
    in_channels: int = 3  # input channels
    num_classes: int = 1000  # width of the class-score layer
    batch_norm: bool = False  # BatchNorm after every conv


def print_summary(argv: list[str] | None) -> int:
    cfg = configuration.command_config(SummaryConfig, argv, __doc__, "python -m vgg.summary")
    if cfg is None:  # --print_config
        return 0
    try:
        with torch.device("meta"):
            model = build_vgg(cfg.model_version, num_classes=cfg.num_classes,
                              in_channels=cfg.in_channels, image_size=cfg.image_size,
                              batch_norm=cfg.batch_norm, init=None)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(f"VGG config {cfg.model_version}{' with batch norm' if cfg.batch_norm else ''}, "
          f"{cfg.in_channels}x{cfg.image_size}x{cfg.image_size} input, "
          f"{cfg.num_classes} classes")
    print(format_table(summarize(model.eval(), cfg.in_channels), cfg.model_version,
                       cfg.num_classes))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: print_summary(argv), "python -m vgg.summary")


if __name__ == "__main__":
    sys.exit(main())
