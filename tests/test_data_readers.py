"""The array datasets' readers (vgg/data/readers.py) on files written in the real formats:
MNIST's idx files, CIFAR's python pickles, scikit-learn's digits; damaged files and files
that would run code are refused with a user error naming the file."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dataset_class import DatasetNotFoundError, build_dataset, dataset_spec, eval_transform
from tests.fakedata import encoded_index, label_value, write_cifar, write_mnist
from vgg.data.errors import DatasetError

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.mark.parametrize("name, folder", [("Mnist", "MNIST"), ("FashionMnist", "FashionMNIST")])
def test_mnist_format_loads_padded_to_32_with_labels_and_all_splits(tmp_path, name, folder):
    labels = write_mnist(tmp_path, n_train=60, n_test=20, folder=folder)
    splits = {s: build_dataset(name, s, tmp_path, np.asarray) for s in ("train", "val", "test")}
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


def damage(path: Path, how: str) -> None:
    """Rewrite the gzipped idx file at `path`: its data cut short, its header's magic number
    wrong, or the gzip stream itself cut mid-way."""
    data = gzip.decompress(path.read_bytes())
    if how == "truncated data":
        path.write_bytes(gzip.compress(data[:-100]))
    elif how == "bad header":
        path.write_bytes(gzip.compress(b"\x00\x00\x0d" + data[3:]))  # float32 elements
    else:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("how, message", [
    ("truncated data", "holds 46940 bytes of data but its header announces shape "
                       r"\(60, 28, 28\), 47040 bytes"),
    ("bad header", "is not an idx file of 3-d uint8 data: it starts with 00 00 0d 03"),
    ("truncated gzip", "cannot be read .*damaged or truncated"),
])
def test_damaged_mnist_files_are_user_errors_naming_the_file(tmp_path, how, message):
    write_mnist(tmp_path, n_train=60, n_test=20)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    damage(images, how)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("Mnist", "train", tmp_path, np.asarray)
    assert str(images) in str(error.value)


def test_mnist_images_and_labels_of_different_counts_are_refused(tmp_path):
    write_mnist(tmp_path, n_train=60, n_test=20)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + np.array([3], ">i4").tobytes()
                                     + bytes([1, 2, 3])))
    with pytest.raises(DatasetError, match="holds 20 images but .* 3 labels"):
        build_dataset("Mnist", "test", tmp_path, np.asarray)


@pytest.mark.parametrize("name, cifar100", [("Cifar10", False), ("Cifar", True)])
def test_cifar_pickles_load_as_rgb_hwc_with_labels_and_class_names(tmp_path, name, cifar100):
    labels = write_cifar(tmp_path, n_train=50, n_test=10, cifar100=cifar100)
    train = build_dataset(name, "train", tmp_path, np.asarray)
    test = build_dataset(name, "test", tmp_path, np.asarray)
    num_classes = 100 if cifar100 else 10
    assert train.classes == tuple(f"class{c}" for c in range(num_classes))
    assert (len(train), len(test)) == (45, 10)
    for dataset, split in [(train, "train"), (test, "test")]:
        for image, label in dataset:
            assert image.shape == (32, 32, 3)
            assert label == labels[split][encoded_index(image)]
            red = label_value(label)
            assert (image[5, 5] == [red, 255 - red, 7]).all()


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar_batches_pickled_with_every_protocol_still_load(tmp_path, protocol):
    """CIFAR's own files are Python 2 pickles of a dict holding a numpy array (protocol 2,
    numpy's _reconstruct); newer protocols pickle arrays through other numpy functions."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as file:
            pickle.dump({b"batch_label": b"batch", b"labels": labels, b"data": data,
                         b"filenames": [b"a.png"] * 4}, file, protocol=protocol)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, file,
                    protocol=protocol)
    test = build_dataset("Cifar10", "test", tmp_path, np.asarray)
    assert test.classes == tuple(f"c{i}" for i in range(10))
    assert test.labels.tolist() == labels
    np.testing.assert_array_equal(test.images, data.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))


class WritesAMarker:
    """Unpickling it calls os.system, as a batch from a malicious mirror could."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_batch_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    write_cifar(tmp_path, n_train=10, n_test=5)
    marker = tmp_path / "code-ran"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": WritesAMarker(marker), b"labels": [0]}))
    pickle.loads(pickle.dumps(WritesAMarker(tmp_path / "control")))  # the payload works
    assert (tmp_path / "control").exists()
    with pytest.raises(DatasetError, match=f"{batch} refers to posix.system.*run code"):
        build_dataset("Cifar10", "test", tmp_path, np.asarray)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [10, 0.5, 0.99])
def test_truncated_cifar_pickles_are_user_errors_naming_the_file(tmp_path, cut):
    write_cifar(tmp_path, n_train=10, n_test=5)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    data = batch.read_bytes()
    batch.write_bytes(data[:cut if isinstance(cut, int) else int(len(data) * cut)])
    with pytest.raises(DatasetError, match=f"{batch} is truncated or damaged"):
        build_dataset("Cifar10", "train", tmp_path, np.asarray)


def test_a_pickle_of_something_else_than_a_batch_is_refused(tmp_path):
    write_cifar(tmp_path, n_train=10, n_test=5)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DatasetError, match="are not CIFAR-10's python batches"):
        build_dataset("Cifar10", "test", tmp_path, np.asarray)


def test_digits_load_offline_with_a_fixed_test_set_and_matching_statistics(tmp_path):
    spec = dataset_spec("Digits")
    splits = {s: build_dataset("Digits", s, tmp_path / "nowhere", np.asarray, seed=1)
              for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    other_test = build_dataset("Digits", "test", tmp_path, np.asarray, seed=2)
    assert (other_test.images == splits["test"].images).all()
    assert splits["train"][0][0].shape == (8, 8)
    pixels = load_digits().images / 16  # scikit-learn's own copy, 17 grey levels
    assert spec.mean[0] == pytest.approx(pixels.mean(), abs=0.01)
    assert spec.std[0] == pytest.approx(pixels.std(), abs=0.01)


def test_missing_data_says_where_it_looked_and_how_to_provide_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as missing:
        build_dataset("Mnist", "train", tmp_path, np.asarray)
    message = str(missing.value)
    assert f"MNIST not found: looked for {tmp_path}/MNIST/raw/train-images-idx3-ubyte(.gz)" \
        in message
    assert "--data_root" in message and "--download" in message
    with pytest.raises(DatasetNotFoundError,
                       match="CIFAR-10 not found: .*cifar-10-batches-py/test_batch"):
        build_dataset("Cifar10", "test", tmp_path, np.asarray)
    with pytest.raises(DatasetNotFoundError, match="ImageNet.*image-net.org"):
        build_dataset("ImageNet", "train", tmp_path, np.asarray)
    with pytest.raises(DatasetNotFoundError, match="image folder not found"):
        dataset_spec("ImageFolder", tmp_path / "absent")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(),
                    reason="real MNIST not present in ../shared/data")
def test_real_mnist_loads_with_its_known_size_and_statistics():
    spec = dataset_spec("Mnist")
    splits = {s: build_dataset("Mnist", s, REAL_DATA, np.asarray)
              for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    test = splits["test"]
    assert test.images.shape == (10000, 32, 32)
    assert np.bincount(test.labels).tolist()[:2] == [980, 1135]  # published class counts
    digits = np.concatenate([splits["train"].images, splits["val"].images])[:, 2:-2, 2:-2]
    assert digits.mean() / 255 == pytest.approx(0.1307, abs=1e-4)  # the published 28x28
    assert digits.std() / 255 == pytest.approx(0.3081, abs=1e-4)
    # The network sees them padded to 32x32: the spec's statistics are of those.
    seen = splits["train"].images
    assert seen.mean() / 255 == pytest.approx(spec.mean[0], abs=1e-4)
    assert seen.std() / 255 == pytest.approx(spec.std[0], abs=1e-4)
