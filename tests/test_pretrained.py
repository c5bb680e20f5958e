"""vgg/pretrained.py: torchvision's own VGG state dicts (written by torch.save, as the
published files are) loaded into networks for other tasks, checked tensor by tensor against
the source; torchvision's cache layout; freezing and the pretrained learning rate checked
against hand-computed SGD steps; a short fine-tune on generated image files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

import dataset_class
from tests.fakedata import write_image_folder
from vgg.checkpoint import CheckpointError, save_checkpoint
from vgg.configuration import ConfigError
from vgg.model import build_vgg
from vgg.optim import param_groups, scale_pretrained_lr
from vgg.pretrained import (
    freeze,
    load_pretrained,
    model_from_weights,
    pretrained_parameters,
    read_weights,
)
from vgg.transforms import TrainTransform


@pytest.fixture(scope="module")
def vgg11_file(tmp_path_factory):
    """torchvision's vgg11 with random weights, saved as the published files are: a bare
    state dict, torch.save'd."""
    torch.manual_seed(0)
    state = torchvision.models.vgg11(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "vgg11-random.pth"
    torch.save(state, path)
    return path, state


def small_network_file(tmp_path, **changes):
    """A small torchvision-keyed state dict (config A, BN, 32px, FC width 32): what
    ``python -m vgg.export`` writes for a small network."""
    torch.manual_seed(1)
    args = dict(num_classes=4, in_channels=3, image_size=32, batch_norm=True, fc_width=32)
    model = build_vgg("A", **args)
    state = model.state_dict()
    with torch.no_grad():  # non-trivial BN statistics, so copying them is visible
        for key, value in state.items():
            if key.endswith("running_mean"):
                value.uniform_(-0.1, 0.1)
            elif key.endswith("running_var"):
                value.uniform_(0.5, 1.5)
    state |= changes
    path = tmp_path / "small.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_weights_load_into_another_class_count(vgg11_file):
    path, source = vgg11_file
    weights = read_weights(path)
    assert weights.model_args == {"version": "A", "batch_norm": False, "num_classes": 1000,
                                  "in_channels": 3, "image_size": 224, "fc_width": 4096,
                                  "width": 1.0}
    model = build_vgg("A", num_classes=5)
    before = model.classifier[6].weight.detach().clone()
    report = load_pretrained(model, weights)
    state = model.state_dict()
    for key, value in source.items():
        if key.startswith(("features.", "classifier.0.", "classifier.3.")):
            assert torch.equal(state[key], value), key
    assert torch.equal(state["classifier.6.weight"], before)  # the head is the new one
    assert state["classifier.6.weight"].shape == (5, 4096)
    assert set(report.new) == {"classifier.6"} and not report.adapted
    assert "5 classes here, 1000 in the weights" in report.new["classifier.6"]
    assert report.loaded[-2:] == ["classifier.0", "classifier.3"]
    assert report.normalization == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert "classifier.6" in str(report)


def test_one_channel_data_sums_the_rgb_filters(vgg11_file):
    path, source = vgg11_file
    model = build_vgg("A", num_classes=3, in_channels=1, image_size=32, fc_width=64)
    report = load_pretrained(model, read_weights(path))
    rgb = source["features.0.weight"]
    assert torch.equal(model.features[0].weight.detach(), rgb.sum(1, keepdim=True))
    assert torch.equal(model.features[0].bias.detach(), source["features.0.bias"])
    assert list(report.adapted) == ["features.0"]
    # The point of the sum: a grey image gives the response the RGB filters give to the
    # same image with R = G = B.
    grey = torch.rand(2, 1, 32, 32)
    expected = F.conv2d(grey.expand(-1, 3, -1, -1), rgb, source["features.0.bias"], padding=1)
    torch.testing.assert_close(model.features[0](grey), expected, rtol=1e-5, atol=1e-5)
    # At 32px and FC width 64 the FC layers cannot take the 224px/4096 weights.
    assert set(report.new) == {"classifier.0", "classifier.3", "classifier.6"}
    assert "--image_size 224 keeps FC1" in report.new["classifier.0"]
    assert "--fc_width" in report.new["classifier.3"]


def test_small_image_size_keeps_the_conv_layers_and_fc2(vgg11_file):
    path, source = vgg11_file
    model = build_vgg("A", num_classes=1000, image_size=64)
    report = load_pretrained(model, read_weights(path))
    assert report.new.keys() == {"classifier.0"}  # 512x2x2 features, not 512x7x7
    assert torch.equal(model.classifier[3].weight.detach(), source["classifier.3.weight"])
    assert torch.equal(model.classifier[6].weight.detach(), source["classifier.6.weight"])
    assert torch.equal(model.features[18].weight.detach(), source["features.18.weight"])


def test_another_architecture_is_a_clear_error(vgg11_file):
    path, _ = vgg11_file
    with pytest.raises(CheckpointError, match="vgg11.*--model_version A --batch_norm false"):
        load_pretrained(build_vgg("A", batch_norm=True, init=None), read_weights(path))


def test_a_narrow_networks_state_dict_loads_into_a_narrow_network_only(tmp_path):
    torch.manual_seed(2)
    args = dict(in_channels=3, image_size=32, batch_norm=True, fc_width=32, width=0.25)
    source = build_vgg("A", num_classes=4, **args).state_dict()
    path = tmp_path / "narrow.pth"
    torch.save(source, path)
    weights = read_weights(path)
    assert weights.model_args == dict(num_classes=4, version="A", **args)  # width inferred
    model = build_vgg("A", num_classes=7, **args, init=None)
    load_pretrained(model, weights)
    for key, value in model.state_dict().items():
        if not key.startswith("classifier.6"):
            assert torch.equal(value, source[key]), key
    with pytest.raises(CheckpointError, match="at 0.25x the channels.*--width 0.25"):
        load_pretrained(build_vgg("A", num_classes=4, **(args | {"width": 1.0})), weights)


def test_batch_norm_statistics_and_our_checkpoints_load(tmp_path):
    path, source = small_network_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    preprocessing = {"dataset": "X", "classes": list("abcd"), "in_channels": 3,
                     "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                     "train_scale": [32, 32], "resize": "bilinear"}
    save_checkpoint({"model": source, "preprocessing": preprocessing,
                     "model_args": {"version": "A", "num_classes": 4, "in_channels": 3,
                                    "image_size": 32, "batch_norm": True, "fc_width": 32}},
                    run / "best.pt")
    for where in (path, run):  # a bare state dict, and a run directory's best.pt
        model = build_vgg("A", num_classes=2, image_size=32, batch_norm=True, fc_width=32)
        report = load_pretrained(model, read_weights(where))
        assert report.new.keys() == {"classifier.6"}
        for key, value in source.items():
            if not key.startswith("classifier.6"):
                assert torch.equal(model.state_dict()[key], value), key
    assert report.normalization == ([0.5] * 3, [0.25] * 3)
    # The whole network, as trained, for prediction and export.
    rebuilt = model_from_weights(read_weights(run))
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in source.items())


def test_non_finite_layers_are_not_loaded(tmp_path):
    # torchvision's VGG16_Weights.IMAGENET1K_FEATURES ships its classifier as NaN.
    nan = torch.full((32, 512), float("nan"))
    path, _ = small_network_file(tmp_path, **{"classifier.0.weight": nan})
    model = build_vgg("A", num_classes=4, image_size=32, batch_norm=True, fc_width=32)
    report = load_pretrained(model, read_weights(path))
    assert "non-finite" in report.new["classifier.0"]
    assert torch.isfinite(model.classifier[0].weight).all()
    assert "classifier.3" in report.loaded


def test_other_state_dicts_are_clear_errors(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a VGG state dict"):
        read_weights(tmp_path / "resnet.pth")
    path, _ = small_network_file(tmp_path, **{"classifier.0.weight": torch.zeros(32, 1000)})
    with pytest.raises(CheckpointError, match="FC1 takes 1000 features"):
        read_weights(path)
    with pytest.raises(CheckpointError, match="no file or run directory"):
        read_weights(tmp_path / "missing.pth")


# ------------------------------------------------------------------ torchvision weight names


def offline_torch_cache(monkeypatch, torch_home: Path) -> Path:
    """torch.hub's checkpoint folder under a fresh TORCH_HOME, with every download failing
    at once (through a proxy that nothing listens on): an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return torch_home / "hub" / "checkpoints"


def cached_file_name(weights_name: str) -> str:
    """The name torch.hub caches a download under: the last part of its URL."""
    return torchvision.models.get_weight(weights_name).url.rsplit("/", 1)[-1]


def test_weights_name_offline_names_the_cache_file(tmp_path, monkeypatch):
    cache = offline_torch_cache(monkeypatch, tmp_path / "torch") / "vgg11-8a719046.pth"
    with pytest.raises(CheckpointError) as error:
        read_weights("VGG11_Weights.IMAGENET1K_V1")
    message = str(error.value)
    assert str(cache) in message and "https://download.pytorch.org/models/vgg11-8a719046.pth" \
        in message
    # Read by train.py, predict.py and vgg.export alike: no one command's flag (issue 24).
    assert "--init_from" not in message and "path/to/vgg11-8a719046.pth" in message
    with pytest.raises(CheckpointError, match="VGG16_BN_Weights.IMAGENET1K_V1"):
        read_weights("VGG17_Weights.IMAGENET1K_V1")  # lists the valid names


def test_weights_name_in_the_cache_loads_offline(vgg11_file, tmp_path, monkeypatch):
    path, source = vgg11_file
    cache = offline_torch_cache(monkeypatch, tmp_path / "torch")
    cache.mkdir(parents=True)
    try:
        os.link(path, cache / "vgg11-8a719046.pth")
    except OSError:
        shutil.copyfile(path, cache / "vgg11-8a719046.pth")
    weights = read_weights("VGG11_Weights.IMAGENET1K_V1")
    assert weights.model_args["version"] == "A"
    assert all(torch.equal(weights.state[k], v) for k, v in source.items())
    assert weights.preprocessing["classes"][:2] == ["tench", "goldfish"]
    assert weights.preprocessing["resize"] == "antialias"
    assert weights.preprocessing["mean"] == [0.485, 0.456, 0.406]


def test_features_only_weights_name_loads_offline(tmp_path, monkeypatch):
    # IMAGENET1K_FEATURES: VGG-16's conv layers for Caffe's input convention, no classifier
    # (NaN) and no class names. Here: config D conv layers with a small classifier.
    name = "VGG16_Weights.IMAGENET1K_FEATURES"
    cache = offline_torch_cache(monkeypatch, tmp_path / "torch")
    cache.mkdir(parents=True)
    state = build_vgg("D", num_classes=10, image_size=32, fc_width=32).state_dict()
    torch.save(state, cache / cached_file_name(name))
    weights = read_weights(name)
    assert weights.model_args["version"] == "D" and not weights.model_args["batch_norm"]
    assert all(torch.equal(weights.state[k], v) for k, v in state.items())
    transform = torchvision.models.get_weight(name).transforms()
    assert weights.preprocessing["mean"] == list(transform.mean)  # 0-255 pixels minus mean
    assert weights.preprocessing["std"] == list(transform.std)
    assert weights.preprocessing["classes"] == [str(i) for i in range(10)]


# ------------------------------------------------------------------ fine-tuning


def test_freeze_features_holds_conv_and_batch_norm_still(tmp_path):
    path, source = small_network_file(tmp_path)
    model = build_vgg("A", num_classes=2, image_size=32, batch_norm=True, fc_width=32)
    report = load_pretrained(model, read_weights(path))
    frozen = freeze(model, report, "features")
    assert frozen and all(name.startswith("features.") for name in frozen)
    assert all(not p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert not any(g["params"] and any(id(p) in {id(q) for q in model.features.parameters()}
                                       for p in g["params"])
                   for g in param_groups(model, 5e-4))  # the optimizer never sees them
    model.train()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(model.features[1].running_mean, source["features.1.running_mean"])
    freeze(model, report, "pretrained")
    assert not model.classifier[0].weight.requires_grad
    assert model.classifier[6].weight.requires_grad  # new layers always train
    with pytest.raises(ConfigError, match="--freeze"):
        freeze(model, report, "everything")


def test_pretrained_lr_multiplier_scales_their_sgd_step(tmp_path):
    path, _ = small_network_file(tmp_path)
    model = build_vgg("A", num_classes=2, image_size=32, batch_norm=True, fc_width=32,
                      dropout=0.0)
    report = load_pretrained(model, read_weights(path))
    pretrained = pretrained_parameters(model, report)
    groups = scale_pretrained_lr(param_groups(model, 0.0), pretrained, 0.1, lr=0.5)
    optimizer = torch.optim.SGD(groups, lr=0.5, momentum=0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    pretrained_ids = {id(p) for p in pretrained}
    for name, p in model.named_parameters():
        lr = 0.05 if id(p) in pretrained_ids else 0.5
        torch.testing.assert_close(p.detach(), before[name] - lr * p.grad, msg=name)
    assert {g["name"] for g in groups} >= {"decay_pretrained", "decay"}


def train_briefly(model, loader, epochs, lr, groups=None):
    """Plain SGD epochs; the mean training loss of each."""
    optimizer = torch.optim.SGD(groups or model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(epochs):
        epoch = []
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch.append(loss.item())
        losses.append(sum(epoch) / len(epoch))
    return losses


def image_loader(root, classes, per_class):
    write_image_folder(root, classes, per_class=per_class, size=(40, 48), splits=(),
                       extension=".jpg")
    # Fine-tuning feeds images as the weights were trained (here a plain 0.5/0.25).
    transform = TrainTransform(32, (32, 40), [0.5] * 3, [0.25] * 3, hflip=True,
                               color_shift=False)
    data = dataset_class.build_dataset("ImageFolder", "train", root, transform)
    return dataset_class.build_loader(data, 8, train=True, seed=0)


def test_short_fine_tune_on_image_files_improves(tmp_path):
    # "Pretrained": briefly trained on 8 classes of generated JPEGs, saved as torchvision's
    # files are (a bare state dict).
    torch.manual_seed(0)
    source_model = build_vgg("A", num_classes=8, image_size=32, batch_norm=True, fc_width=32,
                             dropout=0.0)
    train_briefly(source_model, image_loader(tmp_path / "source", list("abcdefgh"), 4), 4, 0.01)
    source = source_model.state_dict()
    torch.save(source, tmp_path / "pretrained.pth")

    model = build_vgg("A", num_classes=3, image_size=32, batch_norm=True, fc_width=32,
                      dropout=0.0)
    report = load_pretrained(model, read_weights(tmp_path / "pretrained.pth"))
    freeze(model, report, "features")
    groups = scale_pretrained_lr(param_groups(model, 0.0), pretrained_parameters(model, report),
                                 0.1, lr=0.01)
    losses = train_briefly(model, image_loader(tmp_path / "photos", ["cat", "dog", "owl"], 8),
                           5, 0.01, groups)
    # From about chance (ln 3 = 1.10) to well below it.
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 0.5, losses
    # The frozen features (weights and BN statistics) are exactly the pretrained ones.
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, source[f"features.{key}"]), key
