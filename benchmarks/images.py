"""Generated photo-like JPEGs at ImageNet's typical sizes, the input of the data benchmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Typical ILSVRC-2012 image shapes (height, width): most are about 500 px on the long side.
SHAPES = [(375, 500), (333, 500), (500, 375), (500, 500), (281, 500)]


def write_jpegs(folder: Path, count: int, noise: float = 12.0, quality: int = 90,
                shapes: list[tuple[int, int]] = SHAPES) -> list[str]:
    """``count`` photo-like JPEGs in ``folder`` (smooth colour fields plus sensor-like noise
    of std ``noise``, JPEG ``quality``), cycling through ``shapes``. Noise 20 at quality 92
    gives about 110 KB per 500x375 image, ImageNet's average file size."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        height, width = shapes[i % len(shapes)]
        y, x = np.mgrid[0:height, 0:width]
        fields = [128 + 100 * np.sin(x / rng.uniform(10, 60) + c) * np.cos(y / rng.uniform(10, 60))
                  for c in range(3)]
        image = np.stack(fields, axis=-1) + rng.normal(0, noise, (height, width, 3))
        path = folder / f"{i}.JPEG"
        cv2.imwrite(str(path), image.clip(0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, quality])
        files.append(str(path))
    return files
