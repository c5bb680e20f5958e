"""vgg/checkpoint.py: files in torch's real format, foreign and broken ones, a full disk."""

import fractions
import os

import pytest
import torch

from vgg.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
    model_state,
    preprocessing_record,
    save_checkpoint,
)
from vgg.model import build_vgg


def small():
    return build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=16)


@pytest.mark.parametrize("content", [[1, 2, 3], torch.zeros(3)], ids=["list", "tensor"])
def test_a_file_that_is_not_a_dict_is_refused(tmp_path, content):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="does not hold a checkpoint dict"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_file_with_python_objects_is_refused_without_torchs_advice(tmp_path):
    torch.save({"model": {}, "note": fractions.Fraction(1, 3)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        load_checkpoint(tmp_path / "x.pt")
    message = str(info.value)
    # torch's text advises loading with weights_only=False (running the file's code).
    assert "weights_only=False" not in message and "file an issue" not in message.lower()


def test_the_weights_of_a_checkpoint_or_of_a_bare_state_dict(tmp_path):
    model = small()
    bare = model.state_dict()
    assert model_state({"model": bare, "step": 3}, "c").keys() == bare.keys()
    assert model_state(dict(bare), "bare").keys() == bare.keys()
    target = small()
    load_model_state(target, model_state(dict(bare), "bare"), "bare")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), bare.values(),
                                                 strict=True))
    for wrong in ({"model": [1, 2]}, {"model": "weights"}, {"model": {}}, {"step": 3}):
        with pytest.raises(CheckpointError, match="holds no network weights"):
            model_state(wrong, "c")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_model_state(target, [1, 2], "c")


def test_model_args_rebuild_a_narrow_network_and_old_ones_mean_full_width(tmp_path):
    args = dict(version="A", num_classes=10, in_channels=1, image_size=32, fc_width=16)
    narrow = build_vgg(**args, width=0.25)
    save_checkpoint({"model": narrow.state_dict(), "model_args": args | {"width": 0.25}},
                    tmp_path / "narrow.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "narrow.pt"))
    assert rebuilt.features[0].out_channels == 16
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                 narrow.state_dict().values(), strict=True))
    # Checkpoints written before --width existed carry no "width": Table 1's widths.
    old = model_from_checkpoint({"model": small().state_dict(), "model_args": args})
    assert old.features[0].out_channels == 64


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    # The temporary file the next save writes through is /dev/full: every write fails
    # with ENOSPC, as on a full disk.
    os.symlink("/dev/full", tmp_path / f".last.pt.{os.getpid()}.tmp")
    with pytest.raises(CheckpointError, match="no space left") as info:
        save_checkpoint({"step": 2, "w": torch.ones(10_000)}, path)
    assert "previous" in str(info.value)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_preprocessing_record_is_plain_and_complete():
    record = preprocessing_record("Digits", range(10), 32, (0.5,), (0.25,), (37, 37))
    assert record == {"dataset": "Digits", "classes": [str(i) for i in range(10)],
                      "in_channels": 1, "image_size": 32, "mean": [0.5], "std": [0.25],
                      "train_scale": [37, 37], "resize": "bilinear"}
    with pytest.raises(ValueError):
        preprocessing_record("x", ["a"], 32, (0.5, 0.5), (0.2,), (32, 32))
