"""Datasets of image files in class folders (vgg/data/image_folders.py): the three
ImageFolder layouts, labels by the training classes' names, and the folder mistakes that
are errors saying what to do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset_class import DatasetNotFoundError, build_dataset, dataset_spec
from tests.fakedata import class_color, settle, write_image_folder
from vgg.data.errors import DatasetError
from vgg.data.file_list import FileList
from vgg.data.imageset import holdout
from vgg.data.statistics import MIN_STD


def test_image_folder_with_split_folders_and_its_measured_spec(tmp_path):
    write_image_folder(tmp_path, ["cat", "dog", "eel"], per_class=4,
                       splits=("train", "val", "test"))
    spec = dataset_spec("ImageFolder", tmp_path)
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (3, 3, 224)
    colors = np.array([class_color(c) for c in range(3)]) / 255  # equal class sizes
    np.testing.assert_allclose(spec.mean, colors.mean(0), atol=1e-3)
    # a channel all classes share has std 0, floored at one grey level (no NaN inputs)
    np.testing.assert_allclose(spec.std, np.maximum(colors.std(0), MIN_STD), atol=1e-3)
    for split in ("train", "val", "test"):  # val/ is used as it is, not held out
        dataset = build_dataset("ImageFolder", split, tmp_path, np.asarray)
        assert dataset.classes == ("cat", "dog", "eel") and len(dataset) == 12
        assert all((image[0, 0] == class_color(label)).all() for image, label in dataset)


def test_flat_image_folder_is_a_training_set_with_held_out_val_and_no_test(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=10, splits=())
    train = build_dataset("ImageFolder", "train", tmp_path, np.asarray, val_fraction=0.2)
    val = build_dataset("ImageFolder", "val", tmp_path, np.asarray, val_fraction=0.2)
    assert (len(train), len(val)) == (16, 4)
    assert not set(train.files) & set(val.files)
    with pytest.raises(DatasetNotFoundError, match="no test/ folder"):
        build_dataset("ImageFolder", "test", tmp_path, np.asarray)


def test_val_and_test_are_labelled_by_the_training_classes_names(tmp_path):
    """train (a, b, c), test (a, c): test/c must be label 2, class c, not the 1 (b) that
    numbering test/'s own folders would give."""
    write_image_folder(tmp_path, ["a", "b", "c"], per_class=2, splits=("train",))
    write_image_folder(tmp_path / "test", ["a", "b", "c"], per_class=2, splits=())
    write_image_folder(tmp_path / "val", ["a", "b", "c"], per_class=2, splits=())
    shutil.rmtree(tmp_path / "test" / "b")
    shutil.rmtree(tmp_path / "val" / "a")
    for split, present in [("test", [0, 2]), ("val", [1, 2])]:
        dataset = build_dataset("ImageFolder", split, tmp_path, np.asarray)
        assert dataset.classes == ("a", "b", "c")
        assert sorted(set(dataset.labels.tolist())) == present
        for image, label in dataset:  # each file's colour is its true class's
            assert (image[0, 0] == class_color(label)).all()


def test_a_split_with_a_class_the_training_set_lacks_is_an_error_naming_it(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train",))
    write_image_folder(tmp_path / "test", ["a", "b", "zebra"], per_class=2, splits=())
    with pytest.raises(DatasetError, match=r"test holds class folder\(s\) zebra that the "
                                           "training set does not have"):
        build_dataset("ImageFolder", "test", tmp_path, np.asarray)


@pytest.mark.parametrize("splits", [("train",), ()])
def test_one_class_is_an_error_saying_a_classifier_needs_two(tmp_path, splits):
    write_image_folder(tmp_path, ["cats"], per_class=3, splits=splits)
    with pytest.raises(DatasetError, match=r"one class folder \(cats\).*at least two"):
        build_dataset("ImageFolder", "train", tmp_path, np.asarray)
    with pytest.raises(DatasetError, match="at least two"):
        dataset_spec("ImageFolder", tmp_path)


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=3, splits=("train",))
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "train" / "c" / "notes.txt").write_text("no image here")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    with pytest.raises(DatasetError, match=r"class folder\(s\) c in .*train hold no images"):
        build_dataset("ImageFolder", "train", tmp_path, np.asarray)
    (tmp_path / "train" / "c" / "notes.txt").unlink()
    (tmp_path / "train" / "c").rmdir()
    assert build_dataset("ImageFolder", "train", tmp_path, np.asarray).classes == ("a", "b")


def test_train_and_val_without_test_offers_the_choices_instead_of_an_errno(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "val"))
    with pytest.raises(DatasetNotFoundError) as missing:
        build_dataset("ImageFolder", "test", tmp_path, np.asarray)
    message = str(missing.value)
    assert "Errno" not in message
    assert f"{tmp_path} has no test/ folder" in message
    assert "val/ chose the checkpoint" in message
    assert "evaluate.py --split val" in message and "optimistic" in message
    assert f"{tmp_path}/test/<class>/" in message


def test_val_or_test_without_train_is_not_taken_for_class_folders(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("val", "test"))
    with pytest.raises(DatasetNotFoundError, match="has val/ and test/ but no train/"):
        build_dataset("ImageFolder", "train", tmp_path, np.asarray)


def listed_as_before(folder: Path) -> list[str]:
    """The training files in the order the listing had before it was rewritten: sorted
    class folders, sorted image names in each, joined by pathlib."""
    classes = sorted(c for c in os.listdir(folder)
                     if (folder / c).is_dir() and not c.startswith("."))
    return [str(folder / c / f) for c in classes for f in sorted(os.listdir(folder / c))
            if f.lower().endswith((".png", ".jpg"))]


@pytest.mark.parametrize("relative", [False, True])
def test_the_listing_keeps_the_order_so_splits_and_labels_do_not_change(
        tmp_path, monkeypatch, relative):
    classes = ["b", "B", "a b", "a", "10", "9", "é"]
    for label, name in enumerate(classes):
        (tmp_path / "train" / name).mkdir(parents=True)
        for stem in ("10", "9", "Z", "a", "_x", ".hidden"):
            cv2.imwrite(str(tmp_path / "train" / name / f"{stem}.png"),
                        np.full((8, 8, 3), class_color(label), np.uint8))
        (tmp_path / "train" / name / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "a" / "UPPER.JPG").write_bytes(
        cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    root = tmp_path
    if relative:
        monkeypatch.chdir(tmp_path)
        root = Path(".")
    expected = listed_as_before(root / "train")
    settle(tmp_path)
    for _ in range(2):  # the first listing and the kept one
        train = build_dataset("ImageFolder", "train", root, np.asarray, val_fraction=0.25)
        val = build_dataset("ImageFolder", "val", root, np.asarray, val_fraction=0.25)
        kept, held = holdout(len(expected), 0.25, seed=0)
        assert list(train.files) == [expected[i] for i in kept]
        assert list(val.files) == [expected[i] for i in held]
        names = sorted(classes)
        assert [names[label] for label in train.labels] == [
            Path(expected[i]).parent.name for i in kept]


def listed_names(root: Path) -> list[str]:
    """The file names of an ImageFolder's training and held-out images, as listed."""
    train = build_dataset("ImageFolder", "train", root, np.asarray, val_fraction=0.2)
    val = build_dataset("ImageFolder", "val", root, np.asarray, val_fraction=0.2)
    return sorted(str(Path(f).relative_to(root / "train")) for f in [*train.files, *val.files])


def test_a_train_folder_is_listed_once_until_it_changes(tmp_path):
    write_image_folder(tmp_path, ["cat", "dog"], per_class=3, splits=("train",))
    settle(tmp_path)
    before = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert listed_names(tmp_path) == before
    # A file renamed with the folder's mtime put back, which no real change can do, is not
    # seen: the first listing was kept (a rename keeps the folder's size on any file
    # system). Touching the folder (as any real change does) is.
    os.rename(tmp_path / "train" / "cat" / "2.png", tmp_path / "train" / "cat" / "3.png")
    settle(tmp_path)
    assert listed_names(tmp_path) == before
    os.utime(tmp_path / "train" / "cat")
    renamed = ["cat/0.png", "cat/1.png", "cat/3.png", *before[3:]]
    assert listed_names(tmp_path) == renamed
    # A folder changed seconds ago is listed again at every call: a second change within
    # the same clock tick would leave its mtime as it was.
    shutil.copy(tmp_path / "train" / "cat" / "0.png", tmp_path / "train" / "cat" / "4.png")
    mtime = (tmp_path / "train" / "cat").stat().st_mtime_ns
    assert listed_names(tmp_path) == sorted([*renamed, "cat/4.png"])
    os.rename(tmp_path / "train" / "cat" / "4.png", tmp_path / "train" / "cat" / "5.png")
    os.utime(tmp_path / "train" / "cat", ns=(mtime, mtime))
    assert listed_names(tmp_path) == sorted([*renamed, "cat/5.png"])


@pytest.mark.parametrize("device", ["fifo", "/dev/zero"])
def test_a_fifo_or_a_link_to_a_device_is_not_an_image(tmp_path, device):
    """Opening a FIFO blocks until a writer comes, and /dev/zero never ends: train.py
    waited forever on a file named like an image."""
    write_image_folder(tmp_path, ["cat", "dog"], per_class=3, splits=("train",))
    trap = tmp_path / "train" / "cat" / "trap.png"
    if device == "fifo":
        os.mkfifo(trap)
    else:
        trap.symlink_to(device)
    (tmp_path / "train" / "dog" / "link.png").symlink_to(tmp_path / "train" / "dog" / "0.png")
    train = build_dataset("ImageFolder", "train", tmp_path, np.asarray, val_fraction=0.2)
    val = build_dataset("ImageFolder", "val", tmp_path, np.asarray, val_fraction=0.2)
    names = [Path(f).name for f in [*train.files, *val.files]]
    assert "trap.png" not in names and "link.png" in names and len(names) == 7
    dataset_spec("ImageFolder", tmp_path, val_fraction=0.2)  # the statistics pass reads them


@pytest.mark.parametrize("folder", [".", "/", "a", "a/./b//", "../a", "/tmp/x y"])
def test_file_paths_are_joined_as_pathlib_joins_them(folder):
    assert list(FileList.of(["0.png", "é.JPEG"], Path(folder))) == [
        str(Path(folder) / "0.png"), str(Path(folder) / "é.JPEG")]


@pytest.mark.parametrize("name", ["validation", "valid"])
def test_a_validation_or_valid_folder_is_the_validation_split(tmp_path, name):
    """timm's and Hugging Face's split name: used as val/ is, not ignored for a held-out
    share of train/."""
    write_image_folder(tmp_path, ["a", "b"], per_class=3, splits=("train", "test"),
                       extension=".jpg")
    write_image_folder(tmp_path / name, ["a", "b"], per_class=2, splits=(), extension=".jpg")
    train = build_dataset("ImageFolder", "train", tmp_path, np.asarray)
    val = build_dataset("ImageFolder", "val", tmp_path, np.asarray)
    assert len(train) == 6  # all of train/: nothing held out
    assert sorted(val.files) == sorted(str(p) for p in (tmp_path / name).rglob("*.jpg"))
    assert val.labels.tolist() == [0, 0, 1, 1]
    assert dataset_spec("ImageFolder", tmp_path).num_classes == 2


def test_two_validation_folders_are_an_error_naming_both(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "val", "validation"),
                       extension=".jpg")
    with pytest.raises(DatasetError, match="has val/ and validation/: each is a validation"):
        build_dataset("ImageFolder", "val", tmp_path, np.asarray)
    with pytest.raises(DatasetError, match="has val/ and validation/"):
        dataset_spec("ImageFolder", tmp_path)  # before measuring, as a training run starts


def test_no_test_split_beside_validation_names_that_folder(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "validation"),
                       extension=".jpg")
    with pytest.raises(DatasetNotFoundError, match="validation/ chose the checkpoint"):
        build_dataset("ImageFolder", "test", tmp_path, np.asarray)


def test_validation_without_train_is_not_taken_for_a_class(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("validation", "test"))
    with pytest.raises(DatasetNotFoundError, match="has validation/ and test/ but no train/"):
        build_dataset("ImageFolder", "train", tmp_path, np.asarray)
