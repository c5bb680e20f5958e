"""Per-sample augmentation seeds (vgg/data/sampling.py, SeededSamples): seeding torch's CPU
generator alone draws exactly what seeding every generator (torch.manual_seed) drew, and
the caller's generator is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vgg.data import ArrayDataset, ImageSet
from vgg.data.sampling import ResumableSampler, SeededSamples, generator_seed
from vgg.transforms import TrainTransform


def jittered_samples(count: int) -> ArrayDataset:
    """``count`` random 4:3 photos under the paper's augmentation at a small size: S
    jittered in [37, 73], a random crop, a flip and the PCA colour shift all draw."""
    images = np.random.default_rng(0).integers(0, 256, (count, 48, 64, 3), dtype=np.uint8)
    transform = TrainTransform(32, (37, 73), (0.5,) * 3, (0.25,) * 3, hflip=True,
                               color_shift=True)
    return ArrayDataset(ImageSet(images, np.arange(count) % 3, ("a", "b", "c")), transform)


def test_each_sample_is_drawn_as_seeding_every_generator_drew_it():
    """Over 2 epochs x 150 samples, bit for bit what torch.manual_seed's seeding drew."""
    dataset = jittered_samples(150)
    samples = SeededSamples(dataset)
    sampler = ResumableSampler(len(dataset), seed=7, rank=0, world=1, with_seeds=True)
    compared = 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for index, seed in sampler:
            torch.manual_seed(generator_seed(seed))
            expected, expected_label = dataset[index]
            image, label = samples[(index, seed)]
            assert torch.equal(image, expected) and label == expected_label
            compared += 1
    assert compared == 300


def test_the_callers_generator_state_is_restored_even_after_an_error():
    class Failing(torch.utils.data.Dataset):
        def __getitem__(self, index):
            torch.rand(5)
            raise OSError("unreadable")

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    SeededSamples(jittered_samples(2))[(1, 99)]
    with pytest.raises(OSError, match="unreadable"):
        SeededSamples(Failing())[(0, 5)]
    assert torch.equal(torch.rand(4), expected)
