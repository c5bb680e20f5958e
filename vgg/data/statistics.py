"""Per-channel mean and standard deviation of a dataset's pixels, the normalisation constants
of its spec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vgg.data.decoding import decode_image
from vgg.data.errors import UnreadableImageError

MIN_STD = 1 / 255  # the smallest std a normalisation divides by: one grey level


def image_statistics(images: Sequence[str] | np.ndarray, max_images: int | None = 256,
                     seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of pixels scaled to [0, 1], rounded to 4 decimals, over a
    seeded sample of up to `max_images` (None: all) of `images`: image files (decoded as RGB;
    256 are enough for the statistics to settle to ~0.01) or a uint8 array (N, H, W[, C]) of
    images as the network sees them (MNIST padded to 32x32, say)."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:max_images]
    in_memory = isinstance(images, np.ndarray)
    total, total_sq, count = 0.0, 0.0, 0
    for i in chosen:
        image = images[i] if in_memory else decode_image(images[i])
        if image is None:
            continue
        pixels = image.reshape(image.shape[0] * image.shape[1], -1) / 255.0
        total = total + pixels.sum(0)
        total_sq = total_sq + (pixels ** 2).sum(0)
        count += len(pixels)
    if count == 0:
        example = f" (e.g. {images[chosen[0]]})" if len(chosen) else ""
        raise UnreadableImageError(f"none of the {len(chosen)} sampled images could be "
                                   f"decoded{example}: are they image files?")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))  # cancellation can dip < 0
    # A channel that never varies (a grey scan stored as RGB, a constant border) would
    # divide by zero: its inputs become NaN. One grey level keeps them finite and ~0.
    std = np.maximum(std, MIN_STD)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
