"""A small training set (MNIST, CIFAR, Digits) held whole on the device as one uint8 tensor,
its batches cut, padded-and-cropped, flipped, colour-shifted and normalised there: no loader
workers, no host-to-device copies after the first. Images that a fixed training scale S
rescales (Digits' 8x8 to 32) are rescaled once, on the host, by the CPU path's own
resampling (rounded to uint8, as its crops are), so every epoch only pads and crops.

The order is the trainer's ResumableSampler's (a permutation per epoch from (seed, epoch)
alone, dealt round-robin to the processes), and each batch's draws come from a device
generator seeded by the batch's first sample seed (vgg.data.sampling.generator_seed), so a run
resumed at (epoch, position) sees exactly the batches, and augmentations, of an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vgg.data.gpu import BatchTrainTransform, DeviceBatches
from vgg.data.sampling import generator_seed
from vgg.errors import UserError
from vgg.transforms import rescaled_size, rescaled_window


def rescaled_images(images: np.ndarray, side: int) -> np.ndarray:
    """Each of ``images`` ((N, H, W[, C]) uint8) rescaled to smallest side ``side`` as
    TrainTransform rescales it (vgg.transforms.rescaled_window)."""
    size = rescaled_size(images.shape[1], images.shape[2], side)
    return np.stack([rescaled_window(image, size, (0, 0, *size)) for image in images])


class ResidentLoader(DeviceBatches):
    """Training batches ``(images, labels)`` of ``images`` ((N, H, W) or (N, H, W, C)
    uint8, as the small datasets hold them) augmented by ``transform``, whose scale must be
    fixed or keep the images at their size (the small datasets' pad-and-crop).
    ``batch_size`` per process; call ``set_epoch(epoch, start)`` before each epoch,
    ``start`` counting the samples this process has already seen in it."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 transform: BatchTrainTransform, batch_size: int, *, device: torch.device,
                 seed: int = 0, rank: int | None = None, world: int | None = None):
        s_min, s_max = transform.scale
        size = images.shape[1:3]
        if s_min == s_max and rescaled_size(images.shape[1], images.shape[2], s_min) != size:
            images = rescaled_images(np.asarray(images), s_min)
        images = torch.as_tensor(images)
        images = images[..., None] if images.ndim == 3 else images
        self.images = images.permute(0, 3, 1, 2).contiguous().to(device)
        if not transform.keeps_size(self.images):
            raise UserError(f"the device-resident loader crops images at their own size; "
                            f"{tuple(self.images.shape[-2:])} images with train scale "
                            f"{transform.scale} would be rescaled: use --train_scale "
                            f"{min(self.images.shape[-2:])} (or one fixed S) or "
                            "--data_pipeline workers")
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        super().__init__(len(self.images), batch_size, device, seed, rank, world)
        self.transform = transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = list(self.sampler)
        if not order:
            return
        indices, seeds = zip(*order, strict=True)
        indices = torch.tensor(indices, device=self.device)
        for start in range(0, len(order), self.batch_size):
            batch = indices[start:start + self.batch_size]
            self.generator.manual_seed(generator_seed(seeds[start]))
            yield self.transform(self.images[batch], self.generator), self.labels[batch]
