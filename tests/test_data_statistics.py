"""Normalisation statistics (vgg/data/statistics.py and the built-in specs) describe the
pixels the network sees: MNIST and FashionMNIST padded to 32x32, not their 28x28 files."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from dataset_class import UnreadableImageError, build_dataset, dataset_spec, image_statistics
from tests.fakedata import write_mnist

PADDED_SHARE = 28 * 28 / (32 * 32)  # padding adds background (0) pixels only


def padded_statistics(mean_28: float, std_28: float) -> tuple[float, float]:
    """Mean and std of 28x28 images padded with zeros to 32x32, from their 28x28 ones:
    both the mean and the mean square shrink by 784/1024."""
    mean = mean_28 * PADDED_SHARE
    return mean, math.sqrt((std_28 ** 2 + mean_28 ** 2) * PADDED_SHARE - mean ** 2)


@pytest.mark.parametrize("name, mean_28, std_28", [
    ("Mnist", 0.1307, 0.3081),         # the well-known statistics of the 28x28 files
    ("FashionMnist", 0.2860, 0.3530),
])
def test_mnist_statistics_are_those_of_the_padded_32x32_images(name, mean_28, std_28):
    mean, std = padded_statistics(mean_28, std_28)
    spec = dataset_spec(name)
    assert spec.mean[0] == pytest.approx(mean, abs=1e-4)
    assert spec.std[0] == pytest.approx(std, abs=2e-4)  # from 4-decimal inputs
    if name == "Mnist":
        assert (spec.mean, spec.std) == ((0.1000,), (0.2752,))


def test_the_padding_formula_holds_on_generated_images(tmp_path):
    write_mnist(tmp_path, n_train=300, n_test=10)
    padded = build_dataset("Mnist", "train", tmp_path, np.asarray, val_fraction=0.1).images
    digits = padded[:, 2:-2, 2:-2] / 255
    mean, std = padded_statistics(digits.mean(), digits.std())
    assert padded.mean() / 255 == pytest.approx(mean, rel=1e-9)
    assert padded.std() / 255 == pytest.approx(std, rel=1e-9)
    assert image_statistics(padded, max_images=None) == ((round(mean, 4),), (round(std, 4),))


def test_image_statistics_of_arrays_match_numpy_per_channel():
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 7, 3), dtype=np.uint8)
    mean, std = image_statistics(images, max_images=None)
    pixels = images.reshape(-1, 3) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), atol=5e-5)
    np.testing.assert_allclose(std, pixels.std(0), atol=5e-5)
    sampled, _ = image_statistics(images, max_images=10, seed=1)
    assert sampled != mean  # a seeded sample of 10 images


def test_a_constant_channel_gets_a_std_of_one_grey_level_not_zero():
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 7, 3), dtype=np.uint8)
    images[..., 2] = 128  # e.g. a grey scan stored as RGB: the blue channel never varies
    mean, std = image_statistics(images, max_images=None)
    assert mean[2] == round(128 / 255, 4)
    assert std[2] == round(1 / 255, 4) and std[0] > 0.2  # (x - mean) / std stays finite


def test_files_none_of_which_decode_are_a_user_error(tmp_path):
    files = []
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"not an image")
        files.append(str(tmp_path / f"{i}.png"))
    with pytest.raises(UnreadableImageError, match="none of the 3 sampled images could be "
                                                   "decoded"):
        image_statistics(files)


def test_statistics_make_no_full_size_float_copy_of_an_image():
    """Issue 24, item 9: statistics of a large image took a float64 copy of it (8 bytes a
    value; 21.6 GB for 30000 x 30000 RGB) and its square. Counted per block now: the peak of
    what is allocated stays below the uint8 image's own size, and the values are exact
    (numpy's float64 statistics of the same pixels)."""
    image = np.random.default_rng(0).integers(0, 256, (1, 3000, 2000, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        mean, std = image_statistics(image, max_images=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes, (peak, image.nbytes)  # 18 MB; a float64 copy is 144 MB
    pixels = image.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), atol=6e-5)
    np.testing.assert_allclose(std, pixels.std(0), atol=6e-5)
