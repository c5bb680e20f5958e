"""The GPU-resident small-data loader (vgg.data.resident) yields what the CPU path would:
every batch image is one of TrainTransform's pad-and-crop/flip outputs of the image its
label belongs to, crops and flips drawn uniformly, every sample once per epoch, and a
resumed epoch continues with exactly the batches of an uninterrupted one."""

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from vgg.data.gpu import BatchTrainTransform
from vgg.data.resident import ResidentLoader
from vgg.errors import UserError
from vgg.transforms import TrainTransform, rescaled_window

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def cifar_like(n: int, channels: int = 3) -> np.ndarray:
    shape = (n, 32, 32, channels) if channels == 3 else (n, 32, 32)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def cpu_transform(channels: int = 3, **kwargs) -> TrainTransform:
    return TrainTransform(32, (32, 32), MEAN[:channels], STD[:channels], hflip=True,
                          padding=4, color_shift=False, **kwargs)


def matching_draw(output: torch.Tensor, image: np.ndarray, cpu: TrainTransform):
    """The one (top, left, flip) of the CPU transform whose output is ``output``."""
    found = []
    for top, left, flip in itertools.product(range(-4, 5), range(-4, 5), (False, True)):
        crop = rescaled_window(image, (32, 32), (top, left, 32, 32))
        expected = cpu.normalize(crop[:, ::-1] if flip else crop)
        if torch.allclose(output, expected, rtol=0, atol=1e-5):
            found.append((top, left, flip))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("channels", [3, 1], ids=["cifar", "mnist"])
def test_each_image_is_a_cpu_pad_and_crop_of_its_own_sample(channels):
    images, cpu = cifar_like(12, channels), cpu_transform(channels)
    loader = ResidentLoader(images, np.arange(12), BatchTrainTransform(cpu), 5,
                            device=torch.device("cpu"), seed=1)
    draws = []
    for epoch in range(12):
        loader.set_epoch(epoch)
        for x, y in loader:
            assert x.dtype == torch.float32 and x.shape[1:] == (channels, 32, 32)
            draws += [matching_draw(out, images[label], cpu) for out, label in
                      zip(x, y.tolist(), strict=True)]
    tops, lefts, flips = (np.array(d) for d in zip(*draws, strict=True))
    for offsets in (tops, lefts):  # uniform over the 9 offsets -4..4
        assert scipy.stats.chisquare(np.bincount(offsets + 4, minlength=9)).pvalue > 1e-3
    assert flips.mean() == pytest.approx(0.5, abs=0.1)


def test_the_colour_shift_is_the_cpu_paths():
    """With the colour shift on, each image differs from a plain crop by a per-channel
    constant (in pixel units) of the size AlexNet's PCA shift draws."""
    images = cifar_like(200)
    cpu = TrainTransform(32, (32, 32), MEAN, STD, hflip=False, padding=0)
    loader = ResidentLoader(images, np.arange(200), BatchTrainTransform(cpu), 200,
                            device=torch.device("cpu"))
    loader.set_epoch(0)
    x, y = next(iter(loader))
    plain = torch.stack([cpu.normalize(images[i]) for i in y.tolist()])
    shift = (x - plain) * torch.tensor(STD)[:, None, None]  # the offset in [0, 1] units
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-5)
    torch.manual_seed(0)
    expected = torch.stack([cpu(images[0]) - cpu.normalize(images[0]) for _ in range(200)])
    expected = expected[:, :, 0, 0] * torch.tensor(STD)
    for channel in range(3):
        assert scipy.stats.ks_2samp(shift[:, channel, 0, 0], expected[:, channel]
                                    ).pvalue > 1e-3


@pytest.mark.parametrize("world", [1, 3])
def test_every_sample_once_per_epoch_and_a_fresh_order_each_epoch(world):
    n = 50
    orders = []
    for epoch in range(2):
        seen = []
        for rank in range(world):
            loader = ResidentLoader(cifar_like(n), np.arange(n),
                                    BatchTrainTransform(cpu_transform()), 8,
                                    device=torch.device("cpu"), seed=5, rank=rank, world=world)
            loader.set_epoch(epoch)
            labels = [y for _, y in loader]
            assert len(labels) == len(loader)
            seen += torch.cat(labels).tolist()
        assert len(seen) == len(set(seen)) == n - n % world  # the remainder changes per epoch
        orders.append(seen)
    assert orders[0] != orders[1]


def test_a_resumed_epoch_continues_with_the_same_batches():
    def loader():
        return ResidentLoader(cifar_like(30), np.arange(30),
                              BatchTrainTransform(cpu_transform()), 7,
                              device=torch.device("cpu"), seed=2)

    whole = loader()
    whole.set_epoch(3)
    batches = list(whole)
    resumed = loader()
    resumed.set_epoch(3, start=14)  # two batches in
    for (x, y), (x_again, y_again) in zip(batches[2:], resumed, strict=True):
        assert torch.equal(y, y_again) and torch.equal(x, x_again)


def test_a_scale_that_would_rescale_the_images_is_refused():
    transform = BatchTrainTransform(TrainTransform(32, (36, 40), MEAN, STD, hflip=True))
    with pytest.raises(UserError, match="--train_scale 32"):
        ResidentLoader(cifar_like(4), np.arange(4), transform, 2, device=torch.device("cpu"))
