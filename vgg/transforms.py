"""The paper's image transforms (Sec. 3.1-3.2) on OpenCV and numpy.

Every transform takes an image as the datasets deliver it, a uint8 numpy array, (H, W, 3)
RGB or (H, W) greyscale, and returns a normalised float32 (C, H, W) tensor.

Random draws come from torch's global generator: DataLoader reseeds it in every worker from
the loader's own generator, so a seeded run augments reproducibly and no two workers share
a stream (numpy's global generator is not reseeded in the main process).

Speed: the training transform never materialises the rescaled image. Only the crop's pixels
are resampled, straight from the decoded image (one `cv2.warpAffine`), so its cost does not
grow with S; flip, colour shift and normalisation are folded into the final conversion.

Evaluation can instead resample as torchvision's reference pipeline does (`EvalTransform`'s
`antialias`): PIL's antialiased bilinear resize of the whole image, bit for bit, for networks
trained on such resizes (torchvision's published weights).

`train_transform` and `eval_transform` configure them for a dataset's spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image

from vgg.configuration import ConfigError

if TYPE_CHECKING:
    from vgg.data.registry import DatasetSpec

# One OpenCV thread per process: loader workers are the parallelism, and OpenCV's pool
# must not exist across fork (a forked worker that touches a pool created in the parent
# deadlocks, e.g. in cv2.setNumThreads). Set here, in the parent, so workers inherit it.
cv2.setNumThreads(1)

# AlexNet's "PCA colour augmentation" (Krizhevsky et al. 2012, Sec. 4.1): eigenvalues and
# eigenvectors (columns) of the 3x3 covariance of ImageNet's training RGB pixels scaled to
# [0, 1], as published with fb.resnet.torch. Per image, alpha ~ N(0, 0.1^2) per component.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])
COLOR_SHIFT_STD = 0.1
# ImageNet's per-channel mean and std of [0, 1] pixels: the ImageNet dataset's normalisation,
# and the one torchvision's published weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --input_convention paper: Caffe's input, 0-255 pixels minus the training mean RGB, which
# is (pixel/255 - mean) / std with this std on every channel.
PAPER_INPUT_STD = 1 / 255

Window = tuple[int, int, int, int]  # top, left, height, width


def single_test_scale(train_scale: tuple[int, int]) -> int:
    """Sec. 3.2's single test scale Q for a network trained at S = [Smin, Smax]: Q = S for a
    fixed S, the middle (Smin + Smax) / 2 (rounded half up) for a jittered one."""
    smin, smax = train_scale
    return (smin + smax + 1) // 2


def input_convention(std: Sequence[float]) -> str:
    """The ``--input_convention`` that a checkpoint's preprocessing ``std`` was made by:
    ``paper`` (0-255 pixels, std 1/255 on every channel) or ``dataset`` (unit scale)."""
    return "paper" if all(abs(s * 255 - 1) < 1e-6 for s in std) else "dataset"


def check_input_convention(record: dict | None, convention: str, source: str) -> None:
    """Refuse to copy layers (``--init from_A``) from a network trained on another input
    scale than this run's: its first layer would see inputs 1/255 / std (about 58x on
    ImageNet) too small or too large. ``record`` is the source checkpoint's preprocessing
    record; None (an older checkpoint or a bare state dict) cannot be checked."""
    if not isinstance(record, dict) or "std" not in record:
        return
    trained = input_convention(record["std"])
    if trained != convention:
        inputs = {"paper": "Caffe's 0-255 pixels minus the mean RGB",
                  "dataset": "unit-scale (pixel/255 - mean) / std"}
        raise ConfigError(
            f"{source} was trained on {inputs[trained]} (its preprocessing records std "
            f"{list(record['std'])}), but this run feeds {inputs[convention]}: the layers "
            f"copied from it would see inputs of another scale. Pass --input_convention "
            f"{trained} to train on the input it was trained on, or give --init_from_A a "
            f"net A trained with --input_convention {convention}")


def color_shift_offset(alpha: Sequence[float] | np.ndarray) -> np.ndarray:
    """RGB offset (pixel scale [0, 1]) that the colour shift adds to every pixel of an image:
    eigvec @ (alpha * eigval)."""
    return IMAGENET_EIGVEC @ (np.asarray(alpha, dtype=np.float64) * IMAGENET_EIGVAL)


def rescaled_size(height: int, width: int, smallest_side: int) -> tuple[int, int]:
    """(height, width) after an isotropic rescale to `smallest_side`; the longer side is
    truncated as torchvision's Resize does, so both pipelines agree on sizes."""
    if height <= width:
        return smallest_side, int(smallest_side * width / height)
    return int(smallest_side * height / width), smallest_side


def rescaled_window(image: np.ndarray, size: tuple[int, int], window: Window) -> np.ndarray:
    """The pixels in `window` of `image` rescaled to `size` = (height, width), without
    computing the rest of the rescaled image. Parts of the window outside the rescaled image
    are zero (padding).

    Resampling is bilinear with cv2.resize's pixel-centre alignment and edge replication, so
    the result equals `cv2.resize(image, size[::-1])[window]` up to rounding. Shrinking by more
    than 2x first averages pixels away (INTER_AREA), since bilinear sampling would skip them.
    """
    out_h, out_w = size
    top, left, height, width = window
    inner_top, inner_left = max(top, 0), max(left, 0)
    inner_bottom, inner_right = min(top + height, out_h), min(left + width, out_w)
    if image.shape[:2] == (out_h, out_w):
        inner = image[inner_top:inner_bottom, inner_left:inner_right]
    else:
        if 2 * out_h < image.shape[0] and 2 * out_w < image.shape[1]:
            image = cv2.resize(image, (2 * out_w, 2 * out_h), interpolation=cv2.INTER_AREA)
        step_y, step_x = image.shape[0] / out_h, image.shape[1] / out_w
        # Inverse map: output pixel (x, y) of the window samples the source at
        # ((left + x + 0.5) * step_x - 0.5, ...), the centre of rescaled pixel left + x.
        inverse = np.array([
            [step_x, 0.0, (inner_left + 0.5) * step_x - 0.5],
            [0.0, step_y, (inner_top + 0.5) * step_y - 0.5],
        ])
        inner = cv2.warpAffine(
            image, inverse, (inner_right - inner_left, inner_bottom - inner_top),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )
    if (inner_top, inner_left, inner_bottom, inner_right) == (top, left, top + height,
                                                               left + width):
        return inner
    padded = np.zeros((height, width, *image.shape[2:]), dtype=image.dtype)
    padded[inner_top - top:inner_bottom - top, inner_left - left:inner_right - left] = inner
    return padded


def antialiased_window(image: np.ndarray, size: tuple[int, int], window: Window) -> np.ndarray:
    """The pixels in `window` of `image` rescaled to `size` = (height, width) exactly as
    torchvision's `Resize` does for a PIL image: PIL's antialiased bilinear resize (a triangle
    filter stretched by the shrink factor, so every source pixel contributes), of the whole
    image, then cropped. Parts of the window outside the rescaled image are zero (padding), as
    in `rescaled_window`. Single-threaded (PIL), so safe in forked loader workers.

    PIL itself rather than a look-alike: it is the reference bit for bit (torchvision's
    antialiased uint8 tensor resize is faster but differs by one level on ~0.2% of pixels;
    cv2.INTER_AREA is a box filter, 2-3 levels off on average), and it reads the window from
    the full resize because PIL's `box` argument shifts the filter positions by float rounding.
    """
    out_h, out_w = size
    if image.ndim == 2 or image.shape[2] == 3:
        full = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR))
    else:  # modes PIL lacks: channel by channel (the same arithmetic as PIL's RGB resize)
        full = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                                    .resize((out_w, out_h), Image.Resampling.BILINEAR))
                         for c in range(image.shape[2])], axis=-1)
    return rescaled_window(full, size, window)  # already at `size`: only crops and pads


class Normalize:
    """uint8 image -> float32 (C, H, W) tensor of (image / 255 + offset - mean) / std, in one
    pass: the optional per-channel `offset` (the colour shift) lands before normalisation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} differ in length")
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)

    def __call__(self, image: np.ndarray, offset: np.ndarray | float = 0.0) -> torch.Tensor:
        channels_first = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        if channels_first.shape[0] != len(self.mean):
            raise ValueError(
                f"image has {channels_first.shape[0]} channels, normalisation {len(self.mean)}")
        scale = (1.0 / (255.0 * self.std)).astype(np.float32)[:, None, None]
        bias = ((offset - self.mean) / self.std).astype(np.float32)[:, None, None]
        out = np.empty(channels_first.shape, dtype=np.float32)
        np.multiply(channels_first, scale, out=out)
        out += bias
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"Normalize(mean={tuple(self.mean)}, std={tuple(self.std)})"


class TrainTransform:
    """Training augmentation (Sec. 3.1): rescale to a smallest side S drawn per image uniformly
    from the integers in `scale` = (Smin, Smax) (fixed S when equal), take a random
    `size` x `size` crop of the rescaled image zero-padded by `padding` on every side (the
    small-dataset pad-and-crop; 0 for ImageNet), flip it horizontally with probability 1/2 if
    `hflip`, add AlexNet's PCA colour shift if `color_shift` (RGB only), normalise."""

    def __init__(self, size: int, scale: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], *, hflip: bool, padding: int = 0,
                 color_shift: bool = True):
        s_min, s_max = scale
        if not 0 < s_min <= s_max:
            raise ValueError(f"scale must be (Smin, Smax) with 0 < Smin <= Smax, got {scale}")
        if size > s_min + 2 * padding:
            raise ValueError(f"a {size}x{size} crop does not fit an image rescaled to S={s_min}"
                             f" with padding {padding}: use Smin >= {size - 2 * padding}")
        if color_shift and len(mean) != 3:
            raise ValueError("the colour shift is defined for RGB images only")
        self.size, self.scale, self.padding = size, (s_min, s_max), padding
        self.hflip, self.color_shift = hflip, color_shift
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        s_min, s_max = self.scale
        smallest_side = int(torch.randint(s_min, s_max + 1, ()))
        height, width = rescaled_size(image.shape[0], image.shape[1], smallest_side)
        top = int(torch.randint(height + 2 * self.padding - self.size + 1, ())) - self.padding
        left = int(torch.randint(width + 2 * self.padding - self.size + 1, ())) - self.padding
        crop = rescaled_window(image, (height, width), (top, left, self.size, self.size))
        if self.hflip and bool(torch.rand(()) < 0.5):
            crop = crop[:, ::-1]
        offset: np.ndarray | float = 0.0
        if self.color_shift:
            offset = color_shift_offset(torch.randn(3, dtype=torch.float64).numpy()
                                        * COLOR_SHIFT_STD)
        return self.normalize(crop, offset)

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, scale={self.scale}, padding={self.padding},"
                f" hflip={self.hflip}, color_shift={self.color_shift}, {self.normalize})")


class EvalTransform:
    """Test time (Sec. 3.2): rescale to smallest side Q = `scale`, then take the centre
    `size` x `size` crop (torchvision's rounding), or with `size` None keep the whole rescaled
    image (dense evaluation; sizes then vary per image); normalise.

    `antialias` picks the resampling. False (default): the training transform's bilinear
    warp (`rescaled_window`, INTER_AREA first for shrinks beyond 2x), for networks trained by
    this toolkit. True: PIL's antialiased bilinear resize (`antialiased_window`), identical to
    torchvision's `Resize(Q)` + `CenterCrop(size)` on PIL images whenever the crop fits, for
    networks trained on those (torchvision's weights and their published accuracies); ~1 ms
    more per 500x375 image.
    """

    def __init__(self, scale: int, size: int | None, mean: Sequence[float],
                 std: Sequence[float], *, antialias: bool = False):
        self.scale, self.size, self.antialias = scale, size, antialias
        self.normalize = Normalize(mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        height, width = rescaled_size(image.shape[0], image.shape[1], self.scale)
        if self.size is None:
            window = (0, 0, height, width)
        else:
            window = (round((height - self.size) / 2), round((width - self.size) / 2),
                      self.size, self.size)
        resample = antialiased_window if self.antialias else rescaled_window
        return self.normalize(resample(image, (height, width), window))

    def __repr__(self) -> str:
        return (f"EvalTransform(scale={self.scale}, size={self.size},"
                f" antialias={self.antialias}, {self.normalize})")


def train_transform(spec: DatasetSpec, image_size: int, scale: tuple[int, int] | None = None,
                    color_shift: bool = True) -> TrainTransform:
    """The paper's training augmentation for `spec`'s images at `image_size`: rescale to S
    drawn from `scale` = (Smin, Smax) (None: spec.train_scale, proportionally resized when
    image_size differs from spec.image_size), random crop (pad-and-crop for datasets stored at
    their training size), horizontal flip where spec.hflip, colour shift for RGB datasets."""
    ratio = image_size / spec.image_size
    scale = scale or spec.train_scale_at(image_size)
    return TrainTransform(image_size, scale, spec.mean, spec.std, hflip=spec.hflip,
                          padding=round(spec.crop_padding * ratio),
                          color_shift=color_shift and spec.in_channels == 3)


def eval_transform(spec: DatasetSpec, image_size: int, scale: int | None = None,
                   crop: bool = True, *, antialias: bool = False) -> EvalTransform:
    """Test-time transform: rescale to Q = `scale`, then the centre image_size crop, or with
    crop=False the whole rescaled image (dense evaluation). Q defaults to the paper's single
    test scale for the default training scale, 0.5 (Smin + Smax) (= S when fixed), resized
    with image_size: 256 for ImageNet at 224, image_size for the small datasets.
    `antialias` resizes as torchvision's PIL pipeline does (PIL's antialiased bilinear), for
    torchvision's weights; the default matches this toolkit's training resampling."""
    if scale is None:
        scale = single_test_scale(spec.train_scale_at(image_size))
    return EvalTransform(scale, image_size if crop else None, spec.mean, spec.std,
                         antialias=antialias)
