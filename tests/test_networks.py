"""vgg/networks.py: weight files to networks with the preprocessing they were trained with,
checked against the tensors and records written into real checkpoint files."""

from __future__ import annotations

import pytest
import torch

from tests.evalnets import save_tiny_checkpoint
from vgg.checkpoint import CheckpointError, save_checkpoint
from vgg.evaluation import EvaluationError
from vgg.model import build_vgg
from vgg.networks import check_ensemble, network_from_checkpoint, network_from_torchvision
from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD


def test_torchvision_state_dict_is_inferred_and_preprocessed_as_torchvision(tmp_path):
    # torchvision's keys (features.N, classifier.0/3/6), a narrow FC head to stay small
    source = build_vgg("A", num_classes=3, image_size=224, fc_width=64, batch_norm=True)
    path = tmp_path / "vgg11_bn.pth"
    torch.save(source.state_dict(), path)
    network = network_from_torchvision(path)
    assert (network.version, network.batch_norm, network.image_size) == ("A", True, 224)
    assert network.num_classes == 3 and network.antialias
    assert (network.mean, network.std) == (IMAGENET_MEAN, IMAGENET_STD)
    for key, tensor in source.state_dict().items():
        assert torch.equal(network.model.state_dict()[key], tensor), key
    with pytest.raises(CheckpointError, match="pass it with --torchvision_weights"):
        network_from_checkpoint(path)


def test_checkpoint_preprocessing_record_is_read(tmp_path):
    record = {"dataset": "ImageFolder", "classes": ["cat", "dog", "eel"], "in_channels": 3,
              "image_size": 32, "mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.4],
              "train_scale": [40, 56], "resize": "bilinear"}
    save_tiny_checkpoint(tmp_path / "a.pt", num_classes=3, in_channels=3, dataset="Digits",
                         train_scale=(32, 32), preprocessing=record)
    network = network_from_checkpoint(tmp_path / "a.pt")
    assert network.mean == (0.5, 0.25, 0.125) and network.std == (0.2, 0.3, 0.4)
    assert network.classes == ("cat", "dog", "eel") and network.dataset == "ImageFolder"
    assert network.train_scale == (40, 56) and not network.antialias
    # an older checkpoint without the record: nothing invented, the config's scale
    save_tiny_checkpoint(tmp_path / "old.pt", num_classes=3, in_channels=3)
    old = network_from_checkpoint(tmp_path / "old.pt")
    assert old.mean is None and old.classes is None and old.train_scale == (32, 48)
    assert old.dataset == "Digits"
    bad = dict(record, std=[0.2, 0.3])
    save_tiny_checkpoint(tmp_path / "bad.pt", num_classes=3, in_channels=3, preprocessing=bad)
    with pytest.raises(CheckpointError, match="preprocessing std .* not 3 finite numbers"):
        network_from_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("model_args, needle", [
    ({"version": "Z", "num_classes": 10}, "none of Table 1's"),
    ({"versio": "A"}, "unknown entries"),
    ({"version": "A", "num_classes": "ten"}, "is 'ten', expected a int"),
    ("A", "'model_args' entry is a str, not a dict"),
])
def test_bad_model_args_are_checkpoint_errors(tmp_path, model_args, needle):
    path = tmp_path / "bad.pt"
    save_checkpoint({"model": {}, "model_args": model_args, "config": {}}, path)
    with pytest.raises(CheckpointError, match=needle):
        network_from_checkpoint(path)


def test_ensemble_members_must_agree(tmp_path):
    save_tiny_checkpoint(tmp_path / "a.pt")
    save_tiny_checkpoint(tmp_path / "b.pt", seed=1)
    save_tiny_checkpoint(tmp_path / "c.pt", num_classes=7)
    a, b, c = (network_from_checkpoint(tmp_path / f"{n}.pt") for n in "abc")
    check_ensemble([a, b])
    with pytest.raises(EvaluationError, match="class count differs"):
        check_ensemble([a, c])
    b.mean, b.std = (0.1,), (0.3,)
    with pytest.raises(EvaluationError, match="normalisation"):
        check_ensemble([a, b])
