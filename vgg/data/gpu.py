"""The paper's training augmentation (Sec. 3.1) as batched tensor operations on the device
that trains, fed by JPEGs decoded there (nvJPEG through torchvision.io.decode_jpeg).

`BatchTrainTransform` is `vgg.transforms.TrainTransform` for a whole batch at once: per image
a smallest side S drawn uniformly from the integers in [Smin, Smax], a random crop of the
rescaled (optionally zero-padded) image, a horizontal flip with probability 1/2, AlexNet's
PCA colour shift and the normalisation. As on the CPU path, the rescaled image is never
materialised: each output pixel samples the decoded image at the centre of its rescaled
pixel, ``(x + 0.5) * source / rescaled - 0.5``, bilinearly with edge replication (OpenCV's
warp), so the cost is that of the crop, not of S. Images shrunk more than 2x in both sides
are first area-averaged to twice the rescaled size, as the CPU path does. Pixels stay float
(the CPU path rounds its crop to uint8 first: the two agree within one grey level).

Random draws come from a `torch.Generator` on the device, so nothing waits for the host.
The same code runs on CPU tensors (CI tests it against the OpenCV path there).

`JpegLoader` yields training batches from JPEG files: files are read by host threads, then
decoded and augmented on the device. Its order and each batch's draws depend only on
(seed, epoch, position), as with the trainer's ResumableSampler, so a run resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeGuard, cast

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode

from vgg.data.sampling import ResumableSampler, generator_seed
from vgg.errors import UserError
from vgg.transforms import (
    COLOR_SHIFT_STD,
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    TrainTransform,
    rescaled_size,
)

# What torchvision.io.decode_image reads (JPEGs by nvJPEG on a GPU, the others on the host):
# not all of vgg.data.IMAGE_EXTENSIONS (BMP, PNM and TIFF need OpenCV, the CPU path).
DECODABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class UnreadableBatchError(UserError, OSError):
    """No image of a batch could be decoded."""


@dataclass
class Draws:
    """One batch's augmentation draws, one entry per image, on the device."""

    scale: torch.Tensor  # (N,) int64: the smallest side S of the rescaled image
    top: torch.Tensor  # (N,) int64: the crop's top row in the rescaled image (< 0: padding)
    left: torch.Tensor  # (N,) int64: its left column
    flip: torch.Tensor  # (N,) bool: mirrored left to right
    alpha: torch.Tensor | None  # (N, 3) float32: the colour shift's PCA weights; None: off


def rescaled_sizes(height: torch.Tensor, width: torch.Tensor, scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, (height, width) after an isotropic rescale of the smallest side to
    ``scale``, the longer side truncated (vgg.transforms.rescaled_size, batched)."""
    portrait = height > width
    return (torch.where(portrait, scale * height // width, scale),
            torch.where(portrait, scale, scale * width // height))


class BatchTrainTransform:
    """A `TrainTransform`'s augmentation for batches of uint8 (C, H, W) images on any
    device: ``transform(images, generator)`` returns the normalised float32 (N, C, size,
    size) batch. ``draw`` and ``apply`` split it, so a given draw can be replayed."""

    def __init__(self, cpu: TrainTransform):
        self.size, self.scale, self.padding = cpu.size, cpu.scale, cpu.padding
        self.hflip, self.color_shift = cpu.hflip, cpu.color_shift
        self.mean = torch.tensor(cpu.normalize.mean, dtype=torch.float32)
        self.std = torch.tensor(cpu.normalize.std, dtype=torch.float32)

    def __call__(self, images: Sequence[torch.Tensor] | torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        height, width = source_sizes(images, generator.device)
        return self.apply(images, self.draw(height, width, generator))

    def draw(self, height: torch.Tensor, width: torch.Tensor, generator: torch.Generator
             ) -> Draws:
        """The per-image draws for sources of these sizes, as TrainTransform draws them."""
        n, device = len(height), generator.device
        s_min, s_max = self.scale
        scale = torch.randint(s_min, s_max + 1, (n,), generator=generator, device=device)
        rescaled = rescaled_sizes(height, width, scale)
        top, left = (torch.floor(torch.rand(n, generator=generator, device=device)
                                 * (side + 2 * self.padding - self.size + 1)).long()
                     - self.padding for side in rescaled)
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        if not self.hflip:
            flip = torch.zeros_like(flip)
        alpha = (torch.randn(n, 3, generator=generator, device=device) * COLOR_SHIFT_STD
                 if self.color_shift else None)
        return Draws(scale, top, left, flip, alpha)

    def apply(self, images: Sequence[torch.Tensor] | torch.Tensor, draws: Draws
              ) -> torch.Tensor:
        """The crops ``draws`` pick, resampled from ``images`` (a list of (C, H, W) uint8
        tensors of any sizes, or one (N, C, H, W) tensor), flipped, shifted, normalised."""
        device = draws.scale.device
        height, width = source_sizes(images, device)
        out_h, out_w = rescaled_sizes(height, width, draws.scale)
        images, height, width = shrink_large(images, height, width, out_h, out_w)
        rows, row_valid = window_axis(draws.top, self.size, out_h, height)
        cols, col_valid = window_axis(draws.left, self.size, out_w, width)
        cols = torch.where(draws.flip[:, None], cols.flip(1), cols)
        col_valid = torch.where(draws.flip[:, None], col_valid.flip(1), col_valid)
        if self.keeps_size(images):
            pixels = gather(images, rows.long(), cols.long())
        else:
            pixels = resample(images, rows, cols, one_by_one=device.type == "cpu")
        pixels *= row_valid[:, None, :, None] & col_valid[:, None, None, :]
        return self.normalize(pixels, draws.alpha)

    def keeps_size(self, images: Sequence[torch.Tensor] | torch.Tensor
                   ) -> TypeGuard[torch.Tensor]:
        """Whether ``images`` is one same-size batch that every S leaves at its size (the
        small datasets' pad-and-crop): then crops are plain gathers of whole pixels."""
        if not isinstance(images, torch.Tensor):
            return False
        height, width = images.shape[-2:]
        return all(rescaled_size(height, width, s) == (height, width) for s in self.scale)

    def normalize(self, pixels: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
        """(pixels / 255 + colour shift - mean) / std, per image and channel, in place."""
        mean, std = self.mean.to(pixels.device), self.std.to(pixels.device)
        offset = color_shift_offsets(alpha) if alpha is not None else torch.zeros_like(mean)
        bias = (offset - mean) / std
        return pixels.mul_((1 / (255 * std))[:, None, None]).add_(bias[..., :, None, None])

    def __repr__(self) -> str:
        return (f"BatchTrainTransform(size={self.size}, scale={self.scale}, "
                f"padding={self.padding}, hflip={self.hflip}, color_shift={self.color_shift})")


def color_shift_offsets(alpha: torch.Tensor) -> torch.Tensor:
    """Per image, the RGB offset (pixel scale [0, 1]) of the PCA colour shift with weights
    ``alpha``: eigvec @ (alpha * eigval) (vgg.transforms.color_shift_offset, batched)."""
    eigval = torch.tensor(IMAGENET_EIGVAL, dtype=alpha.dtype, device=alpha.device)
    eigvec = torch.tensor(IMAGENET_EIGVEC, dtype=alpha.dtype, device=alpha.device)
    return (alpha * eigval) @ eigvec.T


def source_sizes(images: Sequence[torch.Tensor] | torch.Tensor, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, its (height, width) as int64 tensors on ``device``."""
    if isinstance(images, torch.Tensor):
        n, _, height, width = images.shape
        return (torch.full((n,), height, device=device), torch.full((n,), width, device=device))
    sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.int64)
    sizes = sizes.to(device, non_blocking=True)
    return sizes[:, 0], sizes[:, 1]


def shrink_large(images, height, width, out_h, out_w):
    """Images more than 2x larger than their rescaled size in both sides, area-averaged to
    twice that size first (bilinear sampling would skip pixels), as the CPU path does; and
    the new (height, width). One host read of the sizes, for lists of decoded images only
    (a same-size batch is never that large)."""
    if isinstance(images, torch.Tensor):
        return images, height, width
    large = (2 * out_h < height) & (2 * out_w < width)
    shrink = large.tolist()
    if not any(shrink):
        return images, height, width
    targets = torch.stack([2 * out_h, 2 * out_w], 1).tolist()
    images = [area_average(image, target) if big else image
              for image, big, target in zip(images, shrink, targets, strict=True)]
    return images, torch.where(large, 2 * out_h, height), torch.where(large, 2 * out_w, width)


def area_average(image: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``image`` shrunk to ``size`` = (height, width) by OpenCV's INTER_AREA: each output
    pixel the mean of the source area it covers, partly covered pixels weighted by the
    part (a fractional box filter, so not adaptive_avg_pool2d's whole-pixel bins)."""
    rows, cols = (area_weights(source, target, image.device)
                  for source, target in zip(image.shape[-2:], size, strict=True))
    return (rows @ image.float() @ cols.T).round_().to(torch.uint8)


def area_weights(source: int, target: int, device: torch.device) -> torch.Tensor:
    """(target, source) matrix: row i weights the source pixels by how much of each lies in
    output pixel i's span [i, i + 1) * source / target, over the span's length."""
    ratio = source / target
    edges = torch.arange(target + 1, dtype=torch.float64, device=device) * ratio
    pixel = torch.arange(source, dtype=torch.float64, device=device)
    overlap = (torch.minimum(edges[1:, None], pixel + 1)
               - torch.maximum(edges[:-1, None], pixel)).clamp(min=0)
    return (overlap / ratio).float()


def window_axis(start: torch.Tensor, size: int, rescaled: torch.Tensor, source: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, per image: the source coordinate that each of the window's ``size``
    pixels samples (float64, clamped to the image: edge replication), and whether that pixel
    lies inside the rescaled image (outside: zero padding)."""
    position = start[:, None] + torch.arange(size, device=start.device)
    valid = (position >= 0) & (position < rescaled[:, None])
    step = (source.double() / rescaled.double())[:, None]
    coordinate = (position + 0.5) * step - 0.5
    return coordinate.clamp(min=0).minimum((source - 1)[:, None]), valid


def gather(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 (N, C, len(rows), len(cols)): the pixels rows[n] x cols[n] of image n."""
    n = torch.arange(len(images), device=images.device)[:, None, None]
    return images[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).float()


def resample(images: Sequence[torch.Tensor] | torch.Tensor, rows: torch.Tensor,
             cols: torch.Tensor, one_by_one: bool = True) -> torch.Tensor:
    """float32 (N, C, len(rows), len(cols)): image n bilinearly sampled at rows[n] x cols[n]
    (pixel coordinates within the image, clamped to it), by grid_sample. A same-size batch
    is sampled at once. Images of different sizes are each first cut to the window their
    crop reads (``crop_windows``), and only that is converted to float and sampled: a 224
    crop of a photo rescaled to S reads (224 / S)^2 of it, 38% on average for S in
    [256, 512], so the cost follows the crop rather than the photo. ``one_by_one`` (on a
    CPU) samples each window alone; else (on a GPU, where a call per image costs more
    than the bandwidth of padding) the windows are zero-padded to the largest and sampled
    in one call: the padding is never read, or with weight 0."""
    if isinstance(images, torch.Tensor):
        return sample_grid(images, rows, cols)
    windows, rows, cols = crop_windows(images, rows, cols)
    if not one_by_one:
        return sample_grid(stack_padded(windows), rows, cols)
    return torch.cat([sample_grid(window[None], r[None], c[None])
                      for window, r, c in zip(windows, rows, cols, strict=True)])


def sample_grid(batch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``batch`` (N, C, H, W) bilinearly sampled at rows[n] x cols[n], in float32."""
    height, width = batch.shape[-2:]
    grid = torch.stack(torch.broadcast_tensors(  # float32 before the (N, size, size) grid
        (cols / max(width - 1, 1) * 2 - 1).float()[:, None, :],
        (rows / max(height - 1, 1) * 2 - 1).float()[:, :, None]), dim=-1)
    return F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=True)


def crop_windows(images: Sequence[torch.Tensor], rows: torch.Tensor, cols: torch.Tensor
                 ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each image cut (a view, no copy) to the rows and columns that bilinear samples at
    its coordinates read (floor of the smallest to floor of the largest + 1), and the
    coordinates made relative to the cut. One host read of the windows."""
    first_row, first_col = rows.amin(1).floor(), cols.amin(1).floor()
    windows = torch.stack([first_row, rows.amax(1).floor() + 2,
                           first_col, cols.amax(1).floor() + 2], 1).long().tolist()
    cut = [image[:, top:bottom, left:right]
           for image, (top, bottom, left, right) in zip(images, windows, strict=True)]
    return cut, rows - first_row[:, None], cols - first_col[:, None]


def stack_padded(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """One (N, C, H, W) tensor of images of different sizes, zero-padded at the bottom and
    right to the largest height and width."""
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    batch = images[0].new_zeros(len(images), images[0].shape[0], height, width)
    for slot, image in zip(batch, images, strict=True):
        slot[:, :image.shape[-2], :image.shape[-1]] = image
    return batch


# ------------------------------------------------------------------------------ decoding


def decode_jpegs(data: list[torch.Tensor], device: torch.device
                 ) -> tuple[list[torch.Tensor], list[int]]:
    """RGB uint8 (3, H, W) images on ``device`` from encoded files (1-D uint8 CPU tensors),
    decoded in one batched call (nvJPEG on a GPU), and the positions of those that could not
    be decoded. A batch with a file nvJPEG rejects (CMYK, a PNG named .JPEG) is decoded file
    by file, on the host where the device fails."""
    try:
        return list(torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=device)), []
    except RuntimeError:
        pass
    images, failed = [], []
    for position, encoded in enumerate(data):
        try:
            images.append(torchvision.io.decode_image(encoded, mode=ImageReadMode.RGB)
                          .to(device))
        except RuntimeError:
            failed.append(position)
    return images, failed


class DeviceBatches:
    """What both device-side training loaders share: the trainer's resumable order over
    ``n`` samples for this process, cut into batches of ``batch_size``, and a generator on
    the device for the augmentation draws. Call ``set_epoch(epoch, start)`` before each
    epoch, ``start`` counting the samples this process has already seen in it."""

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int,
                 rank: int | None, world: int | None):
        self.batch_size, self.device = batch_size, device
        self.sampler = ResumableSampler(n, seed, rank, world, with_seeds=True)
        self.generator = torch.Generator(device=device)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class JpegLoader(DeviceBatches):
    """Training batches ``(images, labels)`` on ``device`` from image files: each batch's
    files read by ``threads`` host threads (``prefetch`` batches ahead), decoded on the
    device, augmented by ``transform`` with draws seeded by the batch's position. The order
    is the trainer's ResumableSampler's: call ``set_epoch(epoch, start)`` before each epoch.
    A file that cannot be decoded is replaced by another image of its batch (and listed in
    ``unreadable``), so batches keep their size, as the CPU loader's on_corrupt skip does."""

    def __init__(self, files: Sequence[str], labels: np.ndarray | Sequence[int],
                 transform: BatchTrainTransform, batch_size: int, *, device: torch.device,
                 seed: int = 0, rank: int | None = None, world: int | None = None,
                 threads: int = 8, prefetch: int = 4):
        self.files, self.labels = list(files), torch.as_tensor(np.asarray(labels))
        undecodable = [f for f in self.files if not f.lower().endswith(DECODABLE_EXTENSIONS)]
        if undecodable:
            raise UserError(f"{len(undecodable)} of the {len(self.files)} training images "
                            f"(e.g. {undecodable[0]}) are in a format the GPU data pipeline "
                            f"cannot decode (it reads {', '.join(DECODABLE_EXTENSIONS)}): "
                            "convert them, or use --data_pipeline workers")
        super().__init__(len(self.files), batch_size, device, seed, rank, world)
        self.transform, self.threads, self.prefetch = transform, threads, prefetch
        self.unreadable: set[str] = set()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The sampler deals (index, sample seed) pairs: it was made with_seeds.
        order = cast(list[tuple[int, int]], list(self.sampler))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        with ThreadPoolExecutor(self.threads) as pool:
            pending = [pool.submit(self._decode, batch) for batch in batches[:self.prefetch]]
            for i, batch in enumerate(batches):
                images, indices = pending[i].result()
                if i + self.prefetch < len(batches):
                    pending.append(pool.submit(self._decode, batches[i + self.prefetch]))
                self.generator.manual_seed(generator_seed(batch[0][1]))
                labels = self.labels[indices].to(self.device, non_blocking=True)
                yield self.transform(images, self.generator), labels

    def _decode(self, batch: list[tuple[int, int]]) -> tuple[list[torch.Tensor], list[int]]:
        """The batch's images decoded on the device, and the dataset indices they stand for
        (an unreadable file's place taken by the batch's first readable image)."""
        indices = [index for index, _ in batch]
        data = [torchvision.io.read_file(self.files[index]) for index in indices]
        images, failed = decode_jpegs(data, self.device)
        if not failed:
            return images, indices
        self.unreadable.update(self.files[indices[p]] for p in failed)
        if not images:
            raise UnreadableBatchError(
                f"none of the {len(indices)} files of a batch could be decoded, e.g. "
                f"{self.files[indices[0]]}")
        kept = [index for p, index in enumerate(indices) if p not in failed]
        substitutes = len(failed)
        return images + images[:1] * substitutes, kept + kept[:1] * substitutes
