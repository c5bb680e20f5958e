"""Small VGG networks and checkpoints for the evaluation tests: real models and real
checkpoint files (torch.save through vgg.checkpoint), small enough for a 2-core CPU."""

from __future__ import annotations

import torch

from vgg.checkpoint import save_checkpoint
from vgg.model import build_vgg

CLASSES = 7


def tiny(seed: int = 0, image_size: int = 32, batch_norm: bool = False, in_channels: int = 3,
         num_classes: int = CLASSES):
    torch.manual_seed(seed)
    model = build_vgg("A", num_classes=num_classes, in_channels=in_channels,
                      image_size=image_size, batch_norm=batch_norm, fc_width=64)
    if batch_norm:  # non-trivial running statistics, so eval-mode BN is really exercised
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def spread_scores(model, hidden: torch.Tensor, spread: float = 5.0,
                  centre: torch.Tensor | None = None):
    """``model``'s class-score layer rewritten so that on the hidden activations ``hidden``
    (FC2's outputs, one row per position, crop or flip) each class's scores spread by
    ``spread`` (std) and average 0 over the rows ``centre`` (default: all of ``hidden``):
    different classes win at different rows. Averaging
    posteriors then differs clearly from averaging scores (or from softmaxing before a
    spatial mean), where the plain network's scores differ by hundredths between rows and
    every order agrees within tolerance."""
    last = model.classifier[-1]
    centre = hidden if centre is None else centre
    with torch.no_grad():
        scale = spread / (hidden @ last.weight.T).std(0).clamp_min(1e-12)
        last.weight.mul_(scale[:, None])
        last.bias.copy_(-(centre.mean(0) @ last.weight.T))
    return model


def hidden_of(model, x):
    """FC2's outputs (the class-score layer's inputs) for the crops ``x``."""
    with torch.no_grad():
        return model.classifier[:-1](torch.flatten(model.features(x), 1))


def softmax_of(model, x):
    with torch.no_grad():
        return model(x).softmax(1)


def save_tiny_checkpoint(path, seed=0, num_classes=10, in_channels=1, dataset="Digits",
                         train_scale=(32, 48), image_size=32, preprocessing=None,
                         config_extra=None):
    """A checkpoint as train.py writes it (model, model_args, config; ``preprocessing`` when
    given, as current checkpoints carry it)."""
    model = tiny(seed, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    args = dict(version="A", num_classes=num_classes, in_channels=in_channels,
                image_size=image_size, batch_norm=False, fc_width=64, dropout=0.5)
    config = dict(dataset=dataset, data_root="unused", image_size=image_size,
                  train_scale=list(train_scale) if train_scale else None, model_version="A",
                  batch_norm=False, val_fraction=0.1, seed=0, **(config_extra or {}))
    state = {"model": model.state_dict(), "model_args": args, "config": config}
    if preprocessing is not None:
        state["preprocessing"] = preprocessing
    save_checkpoint(state, path)
    return model
