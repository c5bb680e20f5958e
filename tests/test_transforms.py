"""The paper's training and test-time transforms (vgg/transforms.py, with their defaults for
a dataset spec), checked against OpenCV, torchvision and hand-written numpy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as tv2
import torchvision.transforms.v2.functional as tvf
from PIL import Image
from scipy import stats

from dataset_class import dataset_spec, eval_transform, train_transform
from vgg.transforms import (
    EvalTransform,
    Normalize,
    TrainTransform,
    color_shift_offset,
    rescaled_size,
    rescaled_window,
)

RNG = np.random.default_rng(0)


def ramp(height: int, width: int) -> np.ndarray:
    """Greyscale image whose value is its column, 0..width-1: a crop's slope reveals the
    scale it was resampled at, its sign whether it was flipped."""
    return np.tile(np.arange(width, dtype=np.uint8), (height, 1))


def estimated_scale(crop: torch.Tensor, source_short_side: int) -> float:
    """S of a crop of a ramp, normalised with mean 0 and std 1: a column step of the ramp
    rescaled to S is source_short_side / S grey levels."""
    row = crop[0].mean(0).numpy() * 255
    slope = np.polyfit(np.arange(len(row))[2:-2], row[2:-2], 1)[0]
    return source_short_side / abs(slope) * np.sign(slope)


@pytest.mark.parametrize("height, width, side", [(375, 500, 256), (375, 500, 512),
                                                 (100, 60, 71), (8, 8, 32)])
def test_rescaled_window_equals_opencv_resize_then_crop(height, width, side):
    image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    size = rescaled_size(height, width, side)
    resized = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
    window = (3, 1, size[0] - 5, size[1] - 4)
    got = rescaled_window(image, size, window).astype(int)
    expected = resized[3:size[0] - 2, 1:size[1] - 3].astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1  # fixed-point rounding differs by one level


def test_rescaled_window_antialiases_large_shrinks_and_zero_pads_outside():
    smooth = cv2.GaussianBlur(RNG.integers(0, 256, (800, 1000), dtype=np.uint8), (0, 0), 3)
    area = cv2.resize(smooth, (250, 200), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(rescaled_window(smooth, (200, 250), (0, 0, 200, 250)) - area).mean() < 1.0
    image = RNG.integers(1, 256, (10, 10), dtype=np.uint8)
    padded = rescaled_window(image, (10, 10), (-2, 3, 14, 9))
    assert (padded[2:12, :7] == image[:, 3:]).all()
    assert not padded[:2].any() and not padded[12:].any() and not padded[:, 7:].any()


@pytest.mark.parametrize("height, width, side", [(375, 500, 256), (500, 333, 224), (7, 9, 32)])
def test_rescaled_size_matches_torchvision(height, width, side):
    resized = tvf.resize(torch.zeros(1, height, width), [side])
    assert rescaled_size(height, width, side) == tuple(resized.shape[1:])


def test_normalize_is_per_channel_standardisation_to_chw():
    image = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    expected = ((image / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(Normalize(mean, std)(image).numpy(), expected, atol=1e-5)
    assert Normalize([0.5], [0.5])(image[..., 0]).shape == (1, 4, 5)


def test_scale_jittering_draws_s_per_image_uniformly_from_smin_to_smax():
    torch.manual_seed(0)
    jitter = TrainTransform(48, (64, 128), [0.0], [1.0], hflip=False, color_shift=False)
    scales = np.array([estimated_scale(jitter(ramp(64, 256)), 64) for _ in range(600)])
    assert scales.min() > 64 - 1.5 and scales.max() < 128 + 1.5
    assert scales.min() < 67 and scales.max() > 125  # draws reach both ends
    assert stats.kstest(scales, stats.uniform(63.5, 65).cdf).pvalue > 0.01
    fixed = TrainTransform(48, (96, 96), [0.0], [1.0], hflip=False, color_shift=False)
    assert all(abs(estimated_scale(fixed(ramp(64, 256)), 64) - 96) < 1.5 for _ in range(20))


def test_flips_happen_half_the_time_and_never_for_digits():
    torch.manual_seed(1)
    flips = TrainTransform(48, (64, 64), [0.0], [1.0], hflip=True, color_shift=False)
    flipped = [estimated_scale(flips(ramp(64, 256)), 64) < 0 for _ in range(400)]
    assert 0.42 < np.mean(flipped) < 0.58  # 4 standard deviations of Binomial(400, 1/2)
    for name in ("Mnist", "Digits"):
        transform = train_transform(dataset_spec(name), 32)
        assert not any(estimated_scale(transform(ramp(32, 32)), 32) < 0 for _ in range(100))


def test_crops_have_the_network_size_and_small_datasets_shift_by_up_to_the_padding():
    torch.manual_seed(2)
    imagenet = train_transform(dataset_spec("ImageNet"), 224, scale=(256, 512))
    for shape in [(375, 500, 3), (500, 333, 3), (224, 224, 3), (1200, 900, 3)]:
        assert imagenet(np.zeros(shape, dtype=np.uint8)).shape == (3, 224, 224)
    cifar = train_transform(dataset_spec("Cifar10"), 32)
    dot = np.zeros((32, 32, 3), dtype=np.uint8)
    dot[16, 16] = 255
    shifts = set()
    for _ in range(300):
        red = cifar(dot)[0].numpy()
        row, column = np.unravel_index(red.argmax(), red.shape)
        shifts.add((row - 16, column - 16))
    assert {dy for dy, _ in shifts} == set(range(-4, 5))
    # A flip mirrors column c to 31 - c, turning shifts -4..4 of column 16 into -5..3.
    assert {dx for _, dx in shifts} == set(range(-5, 5))


def test_color_shift_offset_matches_alexnet_pca_lighting():
    eigval = np.array([0.2175, 0.0188, 0.0045])
    eigvec = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])
    alpha = np.array([0.05, -0.12, 0.2])
    expected = [sum(eigvec[c, k] * alpha[k] * eigval[k] for k in range(3)) for c in range(3)]
    np.testing.assert_allclose(color_shift_offset(alpha), expected, rtol=1e-12)


def test_color_shift_adds_one_pca_draw_per_image_before_normalisation():
    mean, std = np.array([0.45, 0.45, 0.4]), np.array([0.25, 0.2, 0.3])
    transform = TrainTransform(8, (8, 8), mean, std, hflip=False, color_shift=True)
    eigval = np.array([0.2175, 0.0188, 0.0045])
    eigvec = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])
    image = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    torch.manual_seed(3)
    alphas = []
    for _ in range(500):
        out = transform(image).numpy().transpose(1, 2, 0)
        offset = out[0, 0] * std + mean - image[0, 0] / 255  # this draw's shift
        alpha = np.linalg.solve(eigvec, offset) / eigval
        reference = (image / 255 + eigvec @ (alpha * eigval) - mean) / std
        np.testing.assert_allclose(out, reference, atol=1e-4)  # every pixel, same shift
        alphas.append(alpha)
    alphas = np.array(alphas)
    np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.12)  # alpha ~ N(0, 0.1^2)
    np.testing.assert_allclose(alphas.mean(0), 0, atol=0.015)
    assert np.abs(np.corrcoef(alphas.T) - np.eye(3)).max() < 0.15  # drawn independently


def test_eval_transform_centre_crop_and_whole_image_match_torchvision():
    image = RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    resized = tvf.resize(tensor, [100], antialias=False)  # enlarging: no antialiasing
    for size, expected in [(96, tvf.center_crop(resized, [96])), (None, resized)]:
        got = EvalTransform(100, size, [0, 0, 0], [1, 1, 1])(image) * 255
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1.01


def test_default_scales_follow_the_spec_and_the_paper():
    imagenet, mnist = dataset_spec("ImageNet"), dataset_spec("Mnist")
    assert eval_transform(imagenet, 224).scale == 256  # Q = S
    assert eval_transform(imagenet, 224, scale=384).scale == 384
    assert eval_transform(mnist, 32).scale == 32
    assert eval_transform(imagenet, 224, crop=False).size is None
    assert train_transform(imagenet, 224).scale == (256, 256)
    assert train_transform(imagenet, 112).scale == (128, 128)  # S / crop kept
    assert train_transform(mnist, 64).padding == 8
    assert not train_transform(mnist, 32).color_shift  # greyscale: no RGB eigenvectors
    with pytest.raises(ValueError, match="does not fit"):
        train_transform(imagenet, 224, scale=(200, 300))


def textured(height: int, width: int, channels: int = 3) -> np.ndarray:
    """Natural-ish texture: noise blurred to a few-pixel grain, with hard stripe edges."""
    noise = RNG.normal(128, 60, (height, width, channels)).astype(np.float32)
    grain = cv2.GaussianBlur(noise, (0, 0), 0.8).reshape(height, width, channels)
    stripes = 40 * np.sign(np.sin(np.arange(width) / 2.3 + np.arange(height)[:, None] / 3.1))
    image = np.clip(grain + stripes[..., None], 0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def torchvision_pil_reference(image: np.ndarray, scale: int, size: int | None) -> np.ndarray:
    """torchvision's ImageNet evaluation on a PIL image: Resize(Q) (always antialiased for
    PIL), then CenterCrop(size); the pipeline behind its published accuracies."""
    steps = [tv2.Resize(scale)] + ([tv2.CenterCrop(size)] if size is not None else [])
    return np.asarray(tv2.Compose(steps)(Image.fromarray(image))).astype(int)


def as_uint8_hwc(tensor: torch.Tensor) -> np.ndarray:
    """Undo Normalize(mean 0, std 1): (C, H, W) floats in [0, 1] -> (H, W, C) grey levels."""
    return np.rint(tensor.numpy().transpose(1, 2, 0) * 255).astype(int)


@pytest.mark.parametrize("height, width, scale, size", [
    (45, 60, 32, 28),    # shrink 1.41: bilinear without antialiasing skips no pixel but blurs less
    (60, 44, 32, 28),    # portrait, odd crop offset (round half to even)
    (130, 97, 24, 20),   # shrink 4.04: beyond the 2x INTER_AREA pre-shrink
    (21, 30, 40, 36),    # upscale: antialiasing does nothing, both modes agree with PIL
])
def test_antialiased_eval_matches_torchvision_pil_resize_and_centre_crop(height, width, scale,
                                                                        size):
    image = textured(height, width)
    expected = torchvision_pil_reference(image, scale, size)
    antialiased = as_uint8_hwc(EvalTransform(scale, size, [0] * 3, [1] * 3, antialias=True)(image))
    assert antialiased.shape == expected.shape
    # PIL itself does the resampling: equal up to the float normalisation's rounding.
    assert np.abs(antialiased - expected).max() <= 1
    assert np.abs(antialiased - expected).mean() <= 0.05
    plain = as_uint8_hwc(EvalTransform(scale, size, [0] * 3, [1] * 3)(image))
    plain_error = np.abs(plain - expected)
    if scale < min(height, width):  # shrinking: the default mode is many levels off
        assert plain_error.mean() > 2 and plain_error.max() > 10
    else:
        assert plain_error.mean() < 1


@pytest.mark.parametrize("channels", [3, 1])
def test_antialiased_dense_eval_returns_the_whole_pil_resized_image(channels):
    image = textured(50, 70, channels)
    transform = eval_transform(dataset_spec("ImageNet"), 224, scale=36, crop=False,
                               antialias=True)
    transform.normalize = Normalize([0] * channels, [1] * channels)
    assert transform.antialias and transform.size is None
    got = transform(image)
    assert got.shape == (channels, *rescaled_size(50, 70, 36)) == (channels, 36, 50)
    expected = torchvision_pil_reference(image, 36, None).reshape(36, 50, channels)
    assert np.abs(as_uint8_hwc(got) - expected).max() <= 1
    assert not eval_transform(dataset_spec("ImageNet"), 224).antialias  # opt-in


def test_the_papers_augmentation_is_the_default_and_without_the_shift_adds_nothing():
    """Sec. 3.1's colour shift is on by default for RGB data, validation images are centre
    crops by default, and without the shift a crop is its pixels normalised, nothing added
    (survivors of the mutation run, issue 21)."""
    imagenet, mnist = dataset_spec("ImageNet"), dataset_spec("Mnist")
    assert train_transform(imagenet, 224).color_shift is True
    assert TrainTransform(8, (8, 8), [0.5] * 3, [0.25] * 3, hflip=False).color_shift is True
    grey = RNG.integers(0, 256, (40, 48), dtype=np.uint8)
    assert eval_transform(mnist, 32)(grey).shape == (1, 32, 32)
    image = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mean, std = np.array([0.45, 0.45, 0.4]), np.array([0.25, 0.2, 0.3])
    plain = TrainTransform(8, (8, 8), mean, std, hflip=False, color_shift=False)(image)
    expected = ((image / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(plain.numpy(), expected, atol=1e-5)
