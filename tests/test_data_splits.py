"""Which images make up train, val and test (vgg/data/splits.py): the seeded held-out
validation part, what val_fraction None and a number mean, and specs measured on the
training split alone."""

from __future__ import annotations

import cv2
import numpy as np

from dataset_class import build_dataset, dataset_spec
from tests.fakedata import encoded_index, write_image_folder, write_mnist
from vgg.data.statistics import MIN_STD


def test_validation_split_is_seeded_disjoint_and_leaves_test_untouched(tmp_path):
    write_mnist(tmp_path, n_train=200, n_test=30)

    def indices(split, seed, fraction=0.1):
        dataset = build_dataset("Mnist", split, tmp_path, np.asarray, seed=seed,
                                val_fraction=fraction)
        return [encoded_index(image[2:-2, 2:-2]) for image, _ in dataset]

    train, val = indices("train", seed=3), indices("val", seed=3)
    assert len(val) == 20 and not set(train) & set(val)
    assert sorted(train + val) == list(range(200))
    assert indices("val", seed=3) == val  # same seed, same split
    assert indices("val", seed=4) != val
    assert len(indices("val", seed=3, fraction=0.25)) == 50
    assert indices("test", seed=3) == indices("test", seed=4) == list(range(30))


def test_val_fraction_none_holds_out_ten_percent_where_there_is_no_validation_split(tmp_path):
    write_mnist(tmp_path, n_train=200, n_test=30)
    default = [build_dataset("Mnist", s, tmp_path, np.asarray) for s in ("train", "val")]
    explicit = [build_dataset("Mnist", s, tmp_path, np.asarray, val_fraction=0.1)
                for s in ("train", "val")]
    for got, expected in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(got.images, expected.images)


def test_a_val_fraction_holds_out_of_train_even_beside_a_val_folder(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=10, splits=("train", "val"))
    own = build_dataset("ImageFolder", "val", tmp_path, np.asarray)
    assert len(own) == 20 and all("/val/" in f for f in own.files)
    assert len(build_dataset("ImageFolder", "train", tmp_path, np.asarray)) == 20
    held = build_dataset("ImageFolder", "val", tmp_path, np.asarray, val_fraction=0.2)
    kept = build_dataset("ImageFolder", "train", tmp_path, np.asarray, val_fraction=0.2)
    assert (len(held), len(kept)) == (4, 16)
    assert all("/train/" in f for f in held.files) and not set(held.files) & set(kept.files)


def test_image_folder_statistics_come_from_the_training_part_never_the_held_out_one(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=10, splits=())
    held_out = build_dataset("ImageFolder", "val", tmp_path, np.asarray).files
    assert len(held_out) == 2
    for path in held_out:  # white validation images would pull a measured mean up
        cv2.imwrite(path, np.full((24, 32, 3), 255, dtype=np.uint8))
    for fraction in (None, 0.5):  # the spec of a run with --val_fraction 0.5 too
        kept = build_dataset("ImageFolder", "train", tmp_path, np.asarray,
                             val_fraction=fraction)
        pixels = np.stack([image for image, _ in kept]).reshape(-1, 3) / 255
        spec = dataset_spec("ImageFolder", tmp_path, val_fraction=fraction)
        assert spec.num_classes == 2
        np.testing.assert_allclose(spec.mean, pixels.mean(0), atol=1e-4)
        np.testing.assert_allclose(spec.std, np.maximum(pixels.std(0), MIN_STD), atol=1e-4)


def test_images_are_labelled_by_the_networks_class_names_when_given(tmp_path):
    """Evaluating a trained network on a moved folder: labels follow the checkpoint's class
    list by name, whatever folders the split holds, and a class it lacks is an error."""
    import pytest

    from vgg.data import DatasetError

    root = tmp_path / "photos"
    write_image_folder(root, ["a", "c"], per_class=2, size=(32, 32), splits=("train", "test"))
    test = build_dataset("ImageFolder", "test", root, lambda image: image,
                         classes=("a", "b", "c"))
    assert test.classes == ("a", "b", "c")
    by_folder = {f.split("/")[-2] for f in test.files}
    assert by_folder == {"a", "c"}
    assert [int(label) for label in test.labels] == [
        "abc".index(f.split("/")[-2]) for f in test.files]
    with pytest.raises(DatasetError, match="c that the network was not trained on"):
        build_dataset("ImageFolder", "test", root, lambda image: image, classes=("a", "b"))
