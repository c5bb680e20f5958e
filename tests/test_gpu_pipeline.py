"""The batched tensor augmentation (vgg.data.gpu) computes the CPU path's augmentation
(vgg.transforms.TrainTransform, OpenCV): for a fixed draw pixel for pixel within one grey
level, and over many draws with the same distributions of scale, crop, flip and colour."""

import cv2
import numpy as np
import pytest
import scipy.stats
import torch
import torchvision

from benchmarks.images import write_jpegs
from vgg.data.gpu import (
    BatchTrainTransform,
    Draws,
    JpegLoader,
    decode_jpegs,
    resample,
    rescaled_sizes,
)
from vgg.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainTransform,
    color_shift_offset,
    rescaled_size,
    rescaled_window,
)


def decoded_jpeg(height: int, width: int, seed: int) -> torch.Tensor:
    """A photo-like image (smooth colour fields plus noise), JPEG-encoded and decoded by
    torchvision: (3, H, W) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    fields = [128 + 100 * np.sin(x / rng.uniform(8, 40) + c) * np.cos(y / rng.uniform(8, 40))
              for c in range(3)]
    image = (np.stack(fields, -1) + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
    _, encoded = cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return torchvision.io.decode_jpeg(torch.from_numpy(encoded.ravel()))


def opencv_crop(image: np.ndarray, transform: TrainTransform, scale: int, top: int,
                left: int, flip: bool, alpha) -> torch.Tensor:
    """What TrainTransform returns for this draw: its own steps, OpenCV's single warp."""
    size = transform.size
    height, width = rescaled_size(image.shape[0], image.shape[1], scale)
    crop = rescaled_window(image, (height, width), (top, left, size, size))
    crop = crop[:, ::-1] if flip else crop
    offset = color_shift_offset(alpha) if alpha is not None else 0.0
    return transform.normalize(crop, offset)


def grey_levels(normalised: torch.Tensor, alpha, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Undo the normalisation and the colour shift: pixel values on the 0-255 scale."""
    offset = color_shift_offset(alpha) if alpha is not None else np.zeros(len(mean))
    shift = torch.tensor(np.asarray(mean) - offset, dtype=torch.float64)[:, None, None]
    return (normalised.double() * torch.tensor(std, dtype=torch.float64)[:, None, None]
            + shift) * 255


def single_draw(scale, top, left, flip, alpha) -> Draws:
    return Draws(torch.tensor([scale]), torch.tensor([top]), torch.tensor([left]),
                 torch.tensor([flip]),
                 None if alpha is None else torch.tensor([alpha], dtype=torch.float32))


@pytest.mark.parametrize("shape, scale, top, left, flip, alpha", [
    ((375, 500), 256, 10, 57, False, (0.1, -0.05, 0.02)),   # landscape, shrink
    ((375, 500), 511, 200, 300, True, (-0.2, 0.1, 0.15)),   # enlarge, flipped
    ((500, 333), 300, 140, 0, True, (0.0, 0.0, 0.0)),       # portrait, at the left edge
    ((260, 260), 224, 0, 0, False, None),                   # square, the whole image
    ((900, 1200), 256, 17, 80, True, (0.05, 0.05, -0.1)),   # > 2x shrink: area-averaged first
])
def test_a_fixed_draw_agrees_with_the_opencv_path_within_one_grey_level(
        shape, scale, top, left, flip, alpha):
    image = decoded_jpeg(*shape, seed=scale)
    cpu = TrainTransform(224, (256, 512), IMAGENET_MEAN, IMAGENET_STD, hflip=True)
    expected = opencv_crop(image.permute(1, 2, 0).numpy(), cpu, scale, top, left, flip, alpha)
    got = BatchTrainTransform(cpu).apply([image], single_draw(scale, top, left, flip, alpha))[0]
    difference = (grey_levels(got, alpha) - grey_levels(expected, alpha)).abs()
    assert difference.max() <= 1.0
    assert difference.mean() < 0.3


def test_a_batch_of_mixed_sizes_is_each_image_on_its_own():
    """Padding images to one batch must not leak one image's pixels into another's crop."""
    images = [decoded_jpeg(375, 500, 1), decoded_jpeg(500, 375, 2), decoded_jpeg(281, 500, 3)]
    cpu = TrainTransform(224, (256, 512), IMAGENET_MEAN, IMAGENET_STD, hflip=True)
    batch = BatchTrainTransform(cpu)
    draws = Draws(torch.tensor([480, 256, 300]), torch.tensor([250, 280, 70]),
                  torch.tensor([400, 30, 170]), torch.tensor([True, False, True]),
                  torch.tensor([[0.1, 0.0, -0.1], [0.0, 0.2, 0.0], [-0.1, -0.1, 0.1]]))
    got = batch.apply(images, draws)
    for i, image in enumerate(images):
        alpha = draws.alpha[i].double().numpy()
        expected = opencv_crop(image.permute(1, 2, 0).numpy(), cpu, int(draws.scale[i]),
                               int(draws.top[i]), int(draws.left[i]), bool(draws.flip[i]),
                               alpha)
        assert (grey_levels(got[i], alpha) - grey_levels(expected, alpha)).abs().max() <= 1.0


@pytest.mark.parametrize("one_by_one", [True, False])
def test_only_each_crops_window_is_sampled_and_no_pixel_changes(one_by_one):
    """Images are cut to the window their crop reads before the float conversion, then
    sampled one by one (CPU) or padded to one batch (GPU): either way, the result is what
    bilinear sampling of each whole image gives (torch's grid_sample on it, computed here),
    for draws over the whole range of S, flips and positions; and so is apply's."""
    shapes = [(375, 500), (500, 375), (281, 500), (333, 500), (500, 500), (260, 300)]
    images = [decoded_jpeg(h, w, seed) for seed, (h, w) in enumerate(shapes * 4)]
    cpu = TrainTransform(224, (256, 512), IMAGENET_MEAN, IMAGENET_STD, hflip=True)
    transform = BatchTrainTransform(cpu)
    height, width = (torch.tensor([image.shape[i] for image in images]) for i in (1, 2))
    draws = transform.draw(height, width, torch.Generator().manual_seed(3))
    out_h, out_w = rescaled_sizes(height, width, draws.scale)
    # the source pixel centres of the crop's output pixels (vgg.transforms), flipped
    rows = ((draws.top[:, None] + torch.arange(224) + 0.5) * (height / out_h)[:, None]
            - 0.5).clamp(min=0).minimum((height - 1)[:, None])
    cols = ((draws.left[:, None] + torch.arange(224) + 0.5) * (width / out_w)[:, None]
            - 0.5).clamp(min=0).minimum((width - 1)[:, None])
    cols = torch.where(draws.flip[:, None], cols.flip(1), cols)
    got = resample(images, rows, cols, one_by_one)
    augmented = transform.apply(images, draws)
    for i, image in enumerate(images):
        grid = torch.stack(torch.broadcast_tensors(
            (cols[i] / (width[i] - 1) * 2 - 1)[None, :],
            (rows[i] / (height[i] - 1) * 2 - 1)[:, None]), dim=-1).float()[None]
        whole = torch.nn.functional.grid_sample(image[None].float(), grid, mode="bilinear",
                                                align_corners=True)[0].double()
        np.testing.assert_allclose(got[i].double(), whole, atol=0.02)
        alpha = draws.alpha[i].double().numpy()
        np.testing.assert_allclose(grey_levels(augmented[i], alpha), whole, atol=0.02)


def test_train_transform_itself_for_a_draw_it_cannot_vary():
    """S fixed and equal to the crop, a square image, no flip, no colour shift: the CPU
    transform has one possible output, and the batched one gives the same."""
    image = decoded_jpeg(150, 150, 7)
    cpu = TrainTransform(96, (96, 96), IMAGENET_MEAN, IMAGENET_STD, hflip=False,
                         color_shift=False)
    expected = cpu(image.permute(1, 2, 0).numpy())
    got = BatchTrainTransform(cpu)([image], torch.Generator().manual_seed(0))[0]
    assert (grey_levels(got, None) - grey_levels(expected, None)).abs().max() <= 1.0


def test_small_images_pad_and_crop_exactly_as_the_cpu_path():
    """CIFAR-sized images at their own size (S = 32, padding 4): whole-pixel crops, zero
    padding outside the image, flips; equal to the CPU transform's up to float rounding."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    cpu = TrainTransform(32, (32, 32), mean, std, hflip=True, padding=4)
    draws = Draws(torch.full((4,), 32), torch.tensor([-4, 4, 0, -2]),
                  torch.tensor([4, -4, 0, 3]), torch.tensor([True, False, True, False]),
                  torch.tensor([[0.1, 0.0, 0.0], [0.0, -0.1, 0.2], [0.0, 0.0, 0.0],
                                [0.3, 0.1, -0.2]]))
    got = BatchTrainTransform(cpu).apply(images, draws)
    for i in range(4):
        expected = opencv_crop(images[i].permute(1, 2, 0).numpy(), cpu, 32, int(draws.top[i]),
                               int(draws.left[i]), bool(draws.flip[i]),
                               draws.alpha[i].double().numpy())
        torch.testing.assert_close(got[i], expected, rtol=0, atol=1e-5)


def ramp_features(normalised: torch.Tensor) -> np.ndarray:
    """Per output image of the ramp below (red rising left to right, green top to bottom,
    blue flat): red's left-to-right rise (S and the flip), green's top-to-bottom rise (the
    flip axis), and each channel's mean (crop position and colour shift)."""
    levels = normalised.double() * 0.25 + 0.5
    red, green = levels[..., 0, :, :], levels[..., 1, :, :]
    return torch.stack([red[..., -1].mean(-1) - red[..., 0].mean(-1),
                        green[..., -1, :].mean(-1) - green[..., 0, :].mean(-1),
                        *levels.mean((-1, -2)).unbind(-1)], -1).numpy()


def test_many_draws_have_the_cpu_paths_distributions():
    """Two-sample Kolmogorov-Smirnov tests, CPU transform against the batched one, on
    features of their outputs that reveal S, the crop position, the flip (and its axis)
    and the colour shift. A wrong flip axis, scale range or colour-shift size fails."""
    height, width = 120, 160
    y, x = np.mgrid[0:height, 0:width]
    ramp = np.stack([255 * x / (width - 1), 255 * y / (height - 1),
                     np.full_like(x, 128.0)], -1).round().astype(np.uint8)
    cpu = TrainTransform(48, (64, 96), (0.5,) * 3, (0.25,) * 3, hflip=True)
    torch.manual_seed(0)
    expected = ramp_features(torch.stack([cpu(ramp) for _ in range(800)]))
    batch = BatchTrainTransform(cpu)
    images = torch.from_numpy(ramp).permute(2, 0, 1)[None].expand(800, -1, -1, -1)
    got = ramp_features(batch(list(images), torch.Generator().manual_seed(1)))
    for feature in range(expected.shape[1]):
        assert scipy.stats.ks_2samp(expected[:, feature], got[:, feature]).pvalue > 1e-3, \
            feature
    assert (got[:, 0] < 0).mean() == pytest.approx(0.5, abs=0.06)  # half the crops mirrored
    assert (got[:, 1] > 0).all()  # never upside down


def test_the_draws_follow_the_papers_definitions():
    """S uniform over the integers [Smin, Smax], the crop uniform over every position that
    fits, a fair flip, alpha ~ N(0, 0.1^2) per component."""
    cpu = TrainTransform(224, (256, 512), IMAGENET_MEAN, IMAGENET_STD, hflip=True)
    n = 40_000
    height, width = torch.full((n,), 375), torch.full((n,), 500)
    draws = BatchTrainTransform(cpu).draw(height, width, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.scale - 256, minlength=257)
    assert len(counts) == 257 and counts.min() > 0
    assert scipy.stats.chisquare(counts.numpy()).pvalue > 1e-3
    # top is uniform over 0..S-224 (S is the short side here): top / (S - 223) ~ U(0, 1)
    relative = (draws.top + 0.5) / (draws.scale - 223)
    assert draws.top.min() == 0 and (draws.top <= draws.scale - 224).all()
    assert scipy.stats.kstest(relative.numpy(), "uniform").pvalue > 1e-3
    long_side = draws.scale * 500 // 375
    assert (draws.left >= 0).all() and (draws.left <= long_side - 224).all()
    assert draws.flip.float().mean() == pytest.approx(0.5, abs=0.01)
    assert draws.alpha.std(0).numpy() == pytest.approx([0.1] * 3, rel=0.03)
    assert draws.alpha.mean(0).abs().max() < 0.003


def test_decode_jpegs_decodes_a_batch_and_names_the_files_it_cannot(tmp_path):
    files = write_jpegs(tmp_path, 3)
    data = [torchvision.io.read_file(f) for f in files]
    data.insert(1, torch.frombuffer(bytearray(b"not a jpeg at all"), dtype=torch.uint8))
    images, failed = decode_jpegs(data, torch.device("cpu"))
    assert failed == [1] and len(images) == 3
    for image, f in zip(images, files, strict=True):
        assert torch.equal(image, torchvision.io.decode_image(f))


def test_jpeg_loader_visits_every_file_once_and_resumes_where_it_stopped(tmp_path):
    files = write_jpegs(tmp_path, 10, shapes=[(60, 80), (80, 60)])
    labels = np.arange(10)
    cpu = TrainTransform(32, (40, 48), IMAGENET_MEAN, IMAGENET_STD, hflip=True)

    def loader():
        return JpegLoader(files, labels, BatchTrainTransform(cpu), 4,
                          device=torch.device("cpu"), seed=3, threads=2, prefetch=2)

    whole = loader()
    whole.set_epoch(1)
    batches = list(whole)
    assert [len(y) for _, y in batches] == [4, 4, 2] and len(whole) == 3
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))
    assert batches[0][0].shape == (4, 3, 32, 32)
    resumed = loader()
    resumed.set_epoch(1, start=4)  # after the first batch
    for (x, y), (x_again, y_again) in zip(batches[1:], resumed, strict=True):
        assert torch.equal(y, y_again) and torch.equal(x, x_again)
