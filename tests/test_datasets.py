"""The dataset registry, on-disk formats, splits, loaders and error handling of
dataset_class.py, checked against the truth fakedata writes into every image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.utils.data import DistributedSampler

from dataset_class import (
    DATASETS,
    DatasetNotFoundError,
    UnreadableImageError,
    build_dataset,
    build_loader,
    dataset_spec,
    eval_transform,
)
from tests.fakedata import (
    class_color,
    encoded_index,
    label_value,
    write_cifar,
    write_image_folder,
    write_imagenet_folders,
    write_mnist,
)

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def raw(image: np.ndarray) -> np.ndarray:
    """The identity transform: items come back as the dataset decoded them."""
    return image


def test_every_requested_name_is_registered_with_a_consistent_spec():
    for name in ["Mnist", "FashionMnist", "Cifar10", "Cifar", "Cifar100", "ImageNet",
                 "ImageFolder", "Digits"]:
        assert name in DATASETS
    assert dataset_spec("Cifar") == dataset_spec("Cifar100")
    assert dataset_spec("mnist") == dataset_spec("Mnist")  # names are case-insensitive
    for name in DATASETS:
        if name == "ImageFolder":
            continue
        spec = dataset_spec(name)
        assert spec.image_size % 32 == 0
        assert len(spec.mean) == len(spec.std) == spec.in_channels
    assert (dataset_spec("Cifar100").num_classes, dataset_spec("ImageNet").num_classes) == (100,
                                                                                         1000)
    assert not dataset_spec("Mnist").hflip and not dataset_spec("Digits").hflip


def test_unknown_names_and_bad_arguments_are_value_errors_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'Svhn'.*Mnist.*Cifar10.*ImageNet"):
        dataset_spec("Svhn")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("Svhn", "train", tmp_path, raw)
    with pytest.raises(ValueError, match="split must be one of .*'train', 'val', 'test'"):
        build_dataset("Digits", "validation", tmp_path, raw)
    with pytest.raises(ValueError, match="on_corrupt"):
        build_dataset("Digits", "train", tmp_path, raw, on_corrupt="ignore")
    with pytest.raises(ValueError, match="dataset_spec\\('ImageFolder', root\\)"):
        dataset_spec("ImageFolder")


@pytest.mark.parametrize("name, folder", [("Mnist", "MNIST"), ("FashionMnist", "FashionMNIST")])
def test_mnist_format_loads_padded_to_32_with_labels_and_all_splits(tmp_path, name, folder):
    labels = write_mnist(tmp_path, n_train=60, n_test=20, folder=folder)
    splits = {s: build_dataset(name, s, tmp_path, raw) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [54, 6, 20]
    assert len(splits["train"].classes) == dataset_spec(name).num_classes == 10
    for split, dataset in splits.items():
        source = "test" if split == "test" else "train"
        for image, label in dataset:
            assert image.shape == (32, 32)
            assert not image[:2].any() and not image[:, -2:].any()  # the 2-pixel padding
            digit = image[2:-2, 2:-2]
            assert label == labels[source][encoded_index(digit)]
            assert (digit[1:] == label_value(label)).all()


def test_mnist_items_through_the_eval_transform_are_normalised_tensors(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5)
    spec = dataset_spec("Mnist")
    image, label = build_dataset("Mnist", "test", tmp_path, eval_transform(spec, 32))[0]
    assert image.dtype == torch.float32 and image.shape == (1, 32, 32)
    expected_background = (0 - spec.mean[0]) / spec.std[0]
    assert image[0, 0, 0].item() == pytest.approx(expected_background, abs=1e-5)
    assert isinstance(label, int)


@pytest.mark.parametrize("name, cifar100", [("Cifar10", False), ("Cifar", True)])
def test_cifar_pickles_load_as_rgb_hwc_with_labels_and_class_names(tmp_path, name, cifar100):
    labels = write_cifar(tmp_path, n_train=50, n_test=10, cifar100=cifar100)
    train = build_dataset(name, "train", tmp_path, raw)
    test = build_dataset(name, "test", tmp_path, raw)
    num_classes = 100 if cifar100 else 10
    assert train.classes == tuple(f"class{c}" for c in range(num_classes))
    assert (len(train), len(test)) == (45, 10)
    for dataset, split in [(train, "train"), (test, "test")]:
        for image, label in dataset:
            assert image.shape == (32, 32, 3)
            assert label == labels[split][encoded_index(image)]
            red = label_value(label)
            assert (image[5, 5] == [red, 255 - red, 7]).all()


@pytest.mark.parametrize("devkit", [False, True])
def test_imagenet_folders_load_with_sorted_wnid_labels(tmp_path, devkit):
    wnids = ["n02119789", "n01440764", "n01443537"]  # devkit IDs number them otherwise
    write_imagenet_folders(tmp_path / "ImageNet", wnids, per_class=3, devkit=devkit)
    test = build_dataset("ImageNet", "test", tmp_path, raw)
    train = build_dataset("ImageNet", "train", tmp_path, raw)
    val = build_dataset("ImageNet", "val", tmp_path, raw)
    assert test.classes == train.classes == tuple(sorted(wnids))
    assert (len(train), len(val), len(test)) == (8, 1, 9)
    for dataset in (train, val, test):
        for image, label in dataset:
            assert image.shape == (30, 40, 3)
            assert np.abs(image[15, 20].astype(int) - class_color(label)).max() <= 4
    spec = dataset_spec("ImageNet")
    assert build_dataset("ImageNet", "test", tmp_path, eval_transform(spec, 224))[0][0].shape \
        == (3, 224, 224)


def test_image_folder_with_split_folders_and_its_measured_spec(tmp_path):
    write_image_folder(tmp_path, ["cat", "dog", "eel"], per_class=4,
                       splits=("train", "val", "test"))
    spec = dataset_spec("ImageFolder", tmp_path)
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (3, 3, 224)
    colors = np.array([class_color(c) for c in range(3)]) / 255  # equal class sizes
    np.testing.assert_allclose(spec.mean, colors.mean(0), atol=1e-3)
    np.testing.assert_allclose(spec.std, colors.std(0), atol=1e-3)
    for split in ("train", "val", "test"):  # val/ is used as it is, not held out
        dataset = build_dataset("ImageFolder", split, tmp_path, raw)
        assert dataset.classes == ("cat", "dog", "eel") and len(dataset) == 12
        assert all((image[0, 0] == class_color(label)).all() for image, label in dataset)


def test_flat_image_folder_is_a_training_set_with_held_out_val_and_no_test(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=10, splits=())
    train = build_dataset("ImageFolder", "train", tmp_path, raw, val_fraction=0.2)
    val = build_dataset("ImageFolder", "val", tmp_path, raw, val_fraction=0.2)
    assert (len(train), len(val)) == (16, 4)
    assert not set(train.files) & set(val.files)
    with pytest.raises(DatasetNotFoundError, match="no test/ folder"):
        build_dataset("ImageFolder", "test", tmp_path, raw)


def test_validation_split_is_seeded_disjoint_and_leaves_test_untouched(tmp_path):
    write_mnist(tmp_path, n_train=200, n_test=30)

    def indices(split, seed, fraction=0.1):
        dataset = build_dataset("Mnist", split, tmp_path, raw, seed=seed, val_fraction=fraction)
        return [encoded_index(image[2:-2, 2:-2]) for image, _ in dataset]

    train, val = indices("train", seed=3), indices("val", seed=3)
    assert len(val) == 20 and not set(train) & set(val)
    assert sorted(train + val) == list(range(200))
    assert indices("val", seed=3) == val  # same seed, same split
    assert indices("val", seed=4) != val
    assert len(indices("val", seed=3, fraction=0.25)) == 50
    assert indices("test", seed=3) == indices("test", seed=4) == list(range(30))


def test_digits_load_offline_with_a_fixed_test_set_and_matching_statistics(tmp_path):
    spec = dataset_spec("Digits")
    splits = {s: build_dataset("Digits", s, tmp_path / "nowhere", raw, seed=1)
              for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    other_test = build_dataset("Digits", "test", tmp_path, raw, seed=2)
    assert (other_test.images == splits["test"].images).all()
    assert splits["train"][0][0].shape == (8, 8)
    pixels = load_digits().images / 16  # scikit-learn's own copy, 17 grey levels
    assert spec.mean[0] == pytest.approx(pixels.mean(), abs=0.01)
    assert spec.std[0] == pytest.approx(pixels.std(), abs=0.01)


def test_missing_data_says_where_it_looked_and_how_to_provide_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as missing:
        build_dataset("Mnist", "train", tmp_path, raw)
    message = str(missing.value)
    assert f"MNIST not found: looked for {tmp_path}/MNIST/raw/train-images-idx3-ubyte(.gz)" \
        in message
    assert "--data_root" in message and "--download" in message
    with pytest.raises(DatasetNotFoundError,
                       match="CIFAR-10 not found: .*cifar-10-batches-py/test_batch"):
        build_dataset("Cifar10", "test", tmp_path, raw)
    with pytest.raises(DatasetNotFoundError, match="ImageNet.*image-net.org"):
        build_dataset("ImageNet", "train", tmp_path, raw)
    with pytest.raises(DatasetNotFoundError, match="image folder not found"):
        dataset_spec("ImageFolder", tmp_path / "absent")


def test_corrupt_images_are_skipped_with_one_warning_per_epoch_or_raise(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=3, splits=("train", "test"))
    broken = tmp_path / "test" / "a" / "1.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="1.png"):
        build_dataset("ImageFolder", "test", tmp_path, raw, on_corrupt="error")[1]
    dataset = build_dataset("ImageFolder", "test", tmp_path, raw)
    loader = build_loader(dataset, batch_size=2, train=False, workers=2)
    for epoch in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            labels = torch.cat([batch_labels for _, batch_labels in loader]).tolist()
        assert labels == [0, 0, 0, 1, 1, 1]  # the next readable image stood in for 1.png
        assert len(caught) == 1  # across both workers
        assert f"epoch {epoch}: skipped 1 unreadable image file(s)" in str(caught[0].message)
        assert str(broken) in str(caught[0].message)
    assert dataset.unreadable_files() == [str(broken)]


def test_loader_shuffles_reproducibly_and_keeps_eval_order():
    dataset = build_dataset("Digits", "val", "data", raw)

    def labels(loader):
        return torch.cat([batch for _, batch in loader]).tolist()

    first = labels(build_loader(dataset, 16, train=True, seed=5))
    assert first == labels(build_loader(dataset, 16, train=True, seed=5))
    assert first != labels(build_loader(dataset, 16, train=True, seed=6))
    assert len(first) == len(dataset) // 16 * 16  # training drops the last partial batch
    assert labels(build_loader(dataset, 16, train=False)) == dataset.labels.tolist()


def test_distributed_loader_uses_a_seeded_sampler_that_reshuffles_per_epoch(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=0, world_size=1)
    try:
        dataset = build_dataset("Digits", "val", "data", raw)
        loader = build_loader(dataset, 8, train=True, seed=1, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler)
        orders = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            orders.append(list(loader.sampler))
        assert orders[0] != orders[1] and sorted(orders[0]) == list(range(len(dataset)))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(),
                    reason="real MNIST not present in ../shared/data")
def test_real_mnist_loads_with_its_known_size_and_statistics():
    spec = dataset_spec("Mnist")
    splits = {s: build_dataset("Mnist", s, REAL_DATA, raw) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    test = splits["test"]
    assert test.images.shape == (10000, 32, 32)
    assert np.bincount(test.labels).tolist()[:2] == [980, 1135]  # published class counts
    digits = np.concatenate([splits["train"].images, splits["val"].images])[:, 2:-2, 2:-2]
    assert digits.mean() / 255 == pytest.approx(spec.mean[0], abs=1e-4)
    assert digits.std() / 255 == pytest.approx(spec.std[0], abs=1e-4)
