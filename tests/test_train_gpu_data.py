"""train.py with --data_pipeline device, run on CPU tensors: the trainer feeds from the
GPU-resident loader (in-memory datasets) or the JPEG loader (image files), trains, logs and
resumes bit-identically; a dataset that path cannot serve is a clear error. Also the
per-sample augmentation seeds of the CPU pipeline (SeededSamples), which both paths share."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train
from config import Config
from tests.test_train_cli import assert_same_state, rows, tiny
from vgg.checkpoint import load_checkpoint
from vgg.data import ArrayDataset, ImageSet
from vgg.data.gpu import JpegLoader
from vgg.data.resident import ResidentLoader
from vgg.data.sampling import ResumableSampler, SeededSamples
from vgg.train_data import build_data
from vgg.transforms import TrainTransform


def jpeg_folder(root: Path, extension: str = ".jpg") -> list[str]:
    """An ImageFolder of 2 classes x 20 ImageNet-shaped (3:4) noisy photos in ``root``,
    train/ only (10% of it held out for validation); returns the flags of a tiny run on it
    at 32 px. (tests.fakedata's flat colours leave channels with zero std.)"""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog"]):
        (root / "train" / name).mkdir(parents=True)
        for i in range(20):
            photo = rng.integers(0, 128, (48, 64, 3), dtype=np.uint8) + 100 * label
            cv2.imwrite(str(root / "train" / name / f"{i}{extension}"), photo.astype(np.uint8))
    return ["--dataset", "ImageFolder", "--data_root", str(root), "--image_size", "32",
            "--train_subset", "32", "--val_subset", "4"]


def augmented(seed: int, epoch: int) -> torch.Tensor:
    """The training inputs of 8 random CIFAR-like images in one epoch of the CPU pipeline,
    in a fixed order (sample k at position k)."""
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    transform = TrainTransform(32, (32, 32), (0.5,) * 3, (0.25,) * 3, hflip=True, padding=4)
    samples = SeededSamples(ArrayDataset(ImageSet(images, np.zeros(8, np.int64), ("a",)),
                                         transform))
    sampler = ResumableSampler(8, seed, rank=0, world=1, shuffle=False, with_seeds=True)
    sampler.set_epoch(epoch)
    return torch.stack([samples[item][0] for item in sampler])


def test_each_epoch_and_each_seed_draws_new_augmentations():
    """torch's CPU generator keeps a seed's low 32 bits, where ResumableSampler puts the
    position alone: unmixed, sample k was augmented alike in every epoch and every run."""
    first = augmented(seed=0, epoch=0)
    assert torch.equal(first, augmented(seed=0, epoch=0))  # a draw is a function of its seed
    for other in (augmented(seed=0, epoch=1), augmented(seed=1, epoch=0)):
        for a, b in zip(first, other, strict=True):
            assert not torch.equal(a, b)


def test_the_gpu_pipeline_serves_the_subset_with_the_cpu_paths_rescale(tmp_path):
    """Digits (8x8, trained at S = 32) is held on the device rescaled once as cv2.resize
    rescales it; an ImageFolder's files go to the JPEG loader; --train_subset's samples and
    labels are kept, in the CPU pipeline's training order."""
    cfg = Config(dataset="Digits", train_subset=40, data_pipeline="device", workers=0)
    gpu = build_data(cfg, 0, 1)
    cpu = build_data(dataclasses.replace(cfg, data_pipeline="workers"), 0, 1)
    assert isinstance(gpu.train_loader, ResidentLoader)
    subset = gpu.train_set
    digits = subset.dataset.images[subset.indices]
    expected = np.stack([cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
                         for image in digits])
    held = gpu.train_loader.images[:, 0].numpy().astype(int)
    assert held.shape == (40, 32, 32) and np.abs(held - expected).max() <= 1
    assert gpu.train_loader.labels.tolist() == subset.dataset.labels[subset.indices].tolist()
    gpu.sampler.set_epoch(3)
    cpu.sampler.set_epoch(3)
    assert list(gpu.sampler) == list(cpu.sampler)
    assert gpu.steps_per_epoch == cpu.steps_per_epoch

    jpeg_folder(tmp_path)
    folder = build_data(Config(dataset="ImageFolder", data_root=str(tmp_path), image_size=32,
                               train_subset=10, batch_size=8, data_pipeline="device", workers=0),
                        0, 1)
    assert isinstance(folder.train_loader, JpegLoader)
    subset = folder.train_set
    assert folder.train_loader.files == [subset.dataset.files[i] for i in subset.indices]
    x, y = next(iter(folder.train_loader))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [int(subset.dataset.labels[subset.indices[i]])
                          for i, _ in list(folder.sampler)[:8]]


@pytest.mark.parametrize("dataset", ["Digits", "ImageFolder"])
def test_a_run_stopped_and_resumed_is_bit_identical_to_an_uninterrupted_one(tmp_path,
                                                                             dataset):
    data = jpeg_folder(tmp_path / "photos") if dataset == "ImageFolder" else []
    gpu = [*data, "--data_pipeline", "device"]
    assert train.main(tiny(tmp_path / "full", *gpu)) == 0
    assert train.main(tiny(tmp_path / "cut", *gpu, "--max_steps", "3")) == 0
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["step"], cut["config"]["data_pipeline"]) == (3, "device")
    assert train.main(["--resume", str(tmp_path / "cut"), "--max_steps", "none"]) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["step"] == full["step"] > 3
    assert_same_state(full["model"], resumed["model"])
    assert_same_state(full["optimizer"]["state"][0], resumed["optimizer"]["state"][0])
    trained = rows(tmp_path / "full", "train")
    assert [r["step"] for r in rows(tmp_path / "cut", "train")] == [r["step"] for r in trained]
    assert all(np.isfinite(r["loss"]) for r in trained)
    epochs = rows(tmp_path / "full", "epoch")
    assert len(epochs) == 2 and all(r["val_n"] > 0 for r in epochs)
    # The device's augmentation draws are not the CPU pipeline's: the flag changed the feed.
    assert train.main(tiny(tmp_path / "cpu", *data, "--max_steps", "3")) == 0
    on_cpu = load_checkpoint(tmp_path / "cpu" / "last.pt")
    assert not torch.equal(on_cpu["model"]["features.0.weight"], cut["model"]["features.0.weight"])


def test_image_files_it_cannot_decode_are_a_clear_error(tmp_path, capsys):
    flags = jpeg_folder(tmp_path / "bitmaps", extension=".bmp")
    assert train.main(tiny(tmp_path / "run", *flags, "--data_pipeline", "device")) == 2
    err = capsys.readouterr().err
    assert "train.py: error:" in err and "--data_pipeline workers" in err and ".bmp" in err
    assert "Traceback" not in err
    assert train.main(tiny(tmp_path / "run_cpu", *flags, "--max_steps", "1")) == 0


def test_a_scale_range_on_a_small_dataset_is_a_clear_error(capsys, tmp_path):
    assert train.main(tiny(tmp_path / "run", "--data_pipeline", "device",
                           "--train_scale", "32", "40")) == 2
    err = capsys.readouterr().err
    assert "--train_scale" in err and "--data_pipeline workers" in err
    assert "Traceback" not in err
