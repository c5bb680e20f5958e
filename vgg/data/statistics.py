"""Per-channel mean and standard deviation of a dataset's pixels, the normalisation constants
of its spec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vgg.data.errors import UnreadableImageError
from vgg.data.imageset import decode_at

MIN_STD = 1 / 255  # the smallest std a normalisation divides by: one grey level
BLOCK_PIXELS = 2**20


def image_statistics(images: Sequence[str] | np.ndarray, max_images: int | None = 256,
                     seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of pixels scaled to [0, 1], rounded to 4 decimals, over a
    seeded sample of up to `max_images` (None: all) of `images`: image files (decoded as RGB;
    256 are enough for the statistics to settle to ~0.01) or a uint8 array (N, H, W[, C]) of
    images as the network sees them (MNIST padded to 32x32, say)."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:max_images]
    histograms = None  # per channel, how many pixels have each of the 256 values
    for i in chosen:
        image = images[i] if isinstance(images, np.ndarray) else decode_at(images, i)
        if image is None:
            continue
        pixels = image.reshape(image.shape[0] * image.shape[1], -1)
        if histograms is None:
            histograms = np.zeros((pixels.shape[1], 256), np.int64)
        # Counted a block of rows at a time: bincount's int64 copy of a block, never of the
        # whole image (nor a float64 one: a 2^27-pixel image would take 3 GiB per copy).
        for start in range(0, len(pixels), BLOCK_PIXELS):
            for channel, histogram in enumerate(histograms):
                histogram += np.bincount(pixels[start:start + BLOCK_PIXELS, channel],
                                         minlength=256)
    if histograms is None or not histograms.sum():
        example = f" (e.g. {images[chosen[0]]})" if len(chosen) else ""
        raise UnreadableImageError(f"none of the {len(chosen)} sampled images could be "
                                   f"decoded{example}: are they image files?")
    levels = np.arange(256) / 255.0
    count = histograms.sum(1)
    mean = histograms @ levels / count
    std = np.sqrt((histograms * (levels - mean[:, None]) ** 2).sum(1) / count)
    # A channel that never varies (a grey scan stored as RGB, a constant border) would
    # divide by zero: its inputs become NaN. One grey level keeps them finite and ~0.
    std = np.maximum(std, MIN_STD)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
