"""The torch Datasets of a split (vgg/data/datasets.py): image files decoded on access,
unreadable ones skipped or raised as a user error, also from loader worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset_class import UnreadableImageError, build_dataset, build_loader
from tests.fakedata import write_image_folder


def test_unreadable_files_raise_naming_the_file_and_the_flag(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=3, splits=("train", "test"))
    (tmp_path / "test" / "a" / "1.png").write_bytes(b"not an image")
    dataset = build_dataset("ImageFolder", "test", tmp_path, np.asarray, on_corrupt="error")
    with pytest.raises(UnreadableImageError, match="cannot decode .*1.png .*--on_corrupt skip"):
        dataset[1]
    assert dataset[2][1] == 0


def test_an_error_in_a_loader_worker_reaches_the_user_as_one_paragraph(tmp_path):
    """torch re-raises a worker's exception with the worker's traceback in its message; the
    command-line tools print a UserError's message, which must stay the one paragraph."""
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "test"))
    (tmp_path / "test" / "b" / "0.png").write_bytes(b"not an image")
    dataset = build_dataset("ImageFolder", "test", tmp_path, np.asarray, on_corrupt="error")
    loader = build_loader(dataset, batch_size=2, train=False, workers=1)
    with pytest.raises(UnreadableImageError) as error:
        list(loader)
    message = str(error.value)
    assert message == (f"cannot decode {tmp_path}/test/b/0.png (pass --on_corrupt skip to "
                       "skip unreadable images)")


def test_an_image_folder_none_of_whose_files_decode_is_a_user_error(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "test"))
    for path in (tmp_path / "test").rglob("*.png"):
        path.write_bytes(b"not an image")
    dataset = build_dataset("ImageFolder", "test", tmp_path, lambda image: torch.zeros(1))
    loader = build_loader(dataset, batch_size=2, train=False, workers=1)
    with pytest.raises(UnreadableImageError) as error:
        list(loader)
    assert str(error.value).startswith("none of the 4 images could be decoded")
    assert "Traceback" not in str(error.value)
