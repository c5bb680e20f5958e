"""The ILSVRC-2012 reader (vgg/data/imagenet.py) on generated folders in both released
layouts, and the paper's protocol: training on all of train/, deciding on val/."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest

from dataset_class import DatasetNotFoundError, build_dataset, dataset_spec, eval_transform
from tests.fakedata import class_color, write_imagenet_folders
from vgg.data.errors import DatasetError


@pytest.mark.parametrize("devkit", [False, True])
def test_imagenet_folders_load_with_sorted_wnid_labels(tmp_path, devkit):
    wnids = ["n02119789", "n01440764", "n01443537"]  # devkit IDs number them otherwise
    write_imagenet_folders(tmp_path / "ImageNet", wnids, per_class=3, devkit=devkit)
    test = build_dataset("ImageNet", "test", tmp_path, np.asarray)
    train = build_dataset("ImageNet", "train", tmp_path, np.asarray, val_fraction=0.1)
    val = build_dataset("ImageNet", "val", tmp_path, np.asarray, val_fraction=0.1)
    assert test.classes == train.classes == tuple(sorted(wnids))
    assert (len(train), len(val), len(test)) == (8, 1, 9)
    for dataset in (train, val, test):
        for image, label in dataset:
            assert image.shape == (30, 40, 3)
            assert np.abs(image[15, 20].astype(int) - class_color(label)).max() <= 4
    spec = dataset_spec("ImageNet")
    assert build_dataset("ImageNet", "test", tmp_path, eval_transform(spec, 224))[0][0].shape \
        == (3, 224, 224)


@pytest.mark.parametrize("devkit", [False, True])
def test_paper_protocol_trains_on_all_of_train_and_validates_on_the_official_val(tmp_path,
                                                                              devkit):
    """val_fraction None (the default): the paper trained on all 1.28M images and took its
    plateau decisions on the ILSVRC validation set (Sec. 3.1, 4)."""
    wnids = ["n01440764", "n01443537", "n02119789"]
    write_imagenet_folders(tmp_path / "ImageNet", wnids, per_class=4, devkit=devkit)
    train = build_dataset("ImageNet", "train", tmp_path, np.asarray)
    val = build_dataset("ImageNet", "val", tmp_path, np.asarray)
    test = build_dataset("ImageNet", "test", tmp_path, np.asarray)
    every_train_file = sorted(str(p) for p in (tmp_path / "ImageNet" / "train").rglob("*.JPEG"))
    assert sorted(train.files) == every_train_file and len(train) == 12
    every_val_file = sorted(str(p) for p in (tmp_path / "ImageNet" / "val").rglob("*.JPEG"))
    assert sorted(val.files) == every_val_file and len(val) == 12
    assert val.files == test.files and val.labels.tolist() == test.labels.tolist()
    for image, label in val:
        assert np.abs(image[15, 20].astype(int) - class_color(label)).max() <= 4


def test_without_the_official_val_the_paper_protocol_says_how_to_hold_some_out(tmp_path):
    write_imagenet_folders(tmp_path, ["n01440764", "n01443537"], per_class=3)
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(DatasetNotFoundError, match="pass --val_fraction 0.1"):
        build_dataset("ImageNet", "val", tmp_path, np.asarray)
    assert len(build_dataset("ImageNet", "train", tmp_path, np.asarray, val_fraction=0.5)) == 3


def test_flat_val_without_the_devkit_says_what_to_put_where(tmp_path):
    write_imagenet_folders(tmp_path, ["n01440764", "n01443537"], per_class=2, devkit=True)
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="put ILSVRC2012_devkit_t12.tar.gz"):
        build_dataset("ImageNet", "test", tmp_path, np.asarray)


def test_a_devkit_whose_meta_mat_is_a_folder_is_a_damaged_devkit(tmp_path):
    write_imagenet_folders(tmp_path, ["n01440764", "n01443537"], per_class=2, devkit=True)
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive) as original:
        members = [(m, original.extractfile(m) if m.isfile() else None)
                   for m in original.getmembers()]
        contents = {m.name: f.read() for m, f in members if f is not None}
    with tarfile.open(archive, "w:gz") as damaged:
        for member, _ in members:
            if member.name.endswith("data/meta.mat"):
                member = tarfile.TarInfo(member.name)
                member.type = tarfile.DIRTYPE
                damaged.addfile(member)
            else:
                damaged.addfile(member, io.BytesIO(contents[member.name])
                                if member.name in contents else None)
    with pytest.raises(DatasetError, match="lacks data/meta.mat or is damaged"):
        build_dataset("ImageNet", "test", tmp_path, np.asarray)
