"""vgg.train_data: the run's datasets as the config asks for them."""

from __future__ import annotations

import torch

from config import Config
from tests.fakedata import write_image_folder
from vgg.model import build_vgg
from vgg.train_data import build_data


def digits(**changes) -> Config:
    return Config(dataset="Digits", model_version="A", batch_size=8, workers=0, **changes)


def test_the_papers_input_convention_feeds_pixels_minus_the_mean_and_scales_layer_one():
    """Issue 11 point 3: Caffe fed 0-255 pixels minus the training mean RGB. The same image
    under that convention is the unit-scale input times 255 * std exactly, and a network
    with the paper's init (zero biases) then starts with first-layer responses that much
    larger, as the paper's did."""
    unit, paper = build_data(digits(), 0, 1), build_data(digits(input_convention="paper"), 0, 1)
    (std,), (mean,) = unit.spec.std, unit.spec.mean
    x_unit, x_paper = unit.val_set[0][0], paper.val_set[0][0]
    torch.testing.assert_close(x_paper, x_unit * (255 * std), rtol=1e-5, atol=1e-3)
    assert x_paper.max() > 100 and abs(x_paper.min() + 255 * mean) < 1e-3  # black = -mean
    torch.manual_seed(0)
    conv1 = build_vgg("A", num_classes=10, in_channels=1, image_size=32, init="paper").features[0]
    with torch.no_grad():
        ratio = conv1(x_paper[None]).abs().mean() / conv1(x_unit[None]).abs().mean()
    assert abs(ratio - 255 * std) < 1e-3 * 255 * std


def test_the_device_pipeline_on_a_cpu_warns_for_image_files_and_names_the_faster_one(
        tmp_path, capsys):
    """On a CPU, --data_pipeline device decodes and samples image files more slowly than the
    workers' OpenCV path (README, Benchmarks): it says so, and only for image files."""
    write_image_folder(tmp_path, ["cat", "dog"], per_class=5, splits=("train",),
                       extension=".jpg")
    build_data(Config(dataset="ImageFolder", data_root=str(tmp_path), image_size=32,
                      data_pipeline="device", workers=0), 0, 1)
    assert "--data_pipeline workers" in capsys.readouterr().err
    for cfg in (digits(data_pipeline="device"),
                Config(dataset="ImageFolder", data_root=str(tmp_path), image_size=32,
                       workers=0)):
        build_data(cfg, 0, 1)
        assert "--data_pipeline" not in capsys.readouterr().err
