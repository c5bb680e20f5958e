"""The training run's data: the datasets (with --train_subset/--val_subset), their
loaders in the resumable training order (--data_pipeline workers: DataLoader worker
processes; device: the training device decodes and augments whole batches, vgg.data.gpu
and vgg.data.resident), and the batch arithmetic
(micro-batch x accumulation x processes) that the schedule counts steps with."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from vgg.configuration import ConfigError
from vgg.data import (
    ArrayDataset,
    DatasetSpec,
    ImageFileDataset,
    build_dataset,
    build_loader,
    dataset_spec,
    eval_transform,
    train_transform,
)
from vgg.data.gpu import BatchTrainTransform, JpegLoader
from vgg.data.resident import ResidentLoader
from vgg.data.sampling import ResumableSampler, SeededSamples, ShardSampler
from vgg.data.shard_samples import ShardSamples
from vgg.errors import UserError
from vgg.run_log import warn
from vgg.transforms import PAPER_INPUT_STD, TrainTransform, single_test_scale

# A split as build_dataset makes it, or its --train_subset/--val_subset share.
SplitDataset = ArrayDataset | ImageFileDataset | Subset


class DataError(UserError, RuntimeError):
    """The dataset is missing or unusable; the message says what to do."""


@dataclass
class Data:
    """The run's datasets and loaders, and the batch arithmetic the schedule needs."""

    spec: DatasetSpec
    classes: list[str]
    image_size: int
    scale: tuple[int, int]
    train_set: Dataset
    val_set: Dataset
    sampler: ResumableSampler  # the training loader's; set_epoch(epoch, position) each epoch
    train_loader: Any
    val_loader: Any
    micro: int
    accumulation: int
    steps_per_epoch: int


def build_data(cfg: Any, rank: int, world: int,
               normalization: dict[str, Any] | None = None, *,
               device: torch.device | str = "cpu") -> Data:
    """The data of a run configured by ``cfg`` (a config.Config), for process ``rank`` of
    ``world``, training on ``device`` (where --data_pipeline device augments). ``normalization``
    (a checkpoint's preprocessing record: its ``mean`` and ``std``) replaces the dataset's
    own where the channel counts agree: a resumed run keeps the input it started with, a
    fine-tuned network gets the input its weights know. Else ``--input_convention paper``
    feeds Caffe's input: 0-255 pixels minus the mean RGB."""
    try:
        spec = dataset_spec(cfg.dataset, cfg.data_root, val_fraction=cfg.val_fraction)
        if normalization and len(normalization["mean"]) == spec.in_channels:
            spec = dataclasses.replace(spec, mean=tuple(normalization["mean"]),
                                       std=tuple(normalization["std"]))
        elif cfg.input_convention == "paper":  # (pixel/255 - mean) * 255 = pixel - 255 mean
            spec = dataclasses.replace(spec, std=(PAPER_INPUT_STD,) * spec.in_channels)
        image_size = cfg.image_size or spec.image_size
        scale = cfg.train_scale or spec.train_scale_at(image_size)
        try:
            augment = train_transform(spec, image_size, scale, cfg.color_shift)
        except ValueError as error:  # --train_scale against the dataset's default crop
            raise ConfigError(f"--train_scale {','.join(map(str, scale))} does not fit "
                              f"--image_size {image_size}"
                              f"{'' if cfg.image_size else f' ({cfg.dataset} default)'}: "
                              f"{error}") from None
        # The held-out split depends on val_fraction alone (build_dataset's fixed seed), not
        # on --seed: evaluate.py rebuilds it from the checkpoint's config.
        common = {"val_fraction": cfg.val_fraction, "download": cfg.download}
        train_set: SplitDataset  # narrowed to build_dataset's until a subset is taken
        val_set: SplitDataset
        train_set = build_dataset(cfg.dataset, "train", cfg.data_root, augment, **common)
        val_set = build_dataset(
            cfg.dataset, "val", cfg.data_root,
            eval_transform(spec, image_size, single_test_scale(scale)), **common)
    except FileNotFoundError as error:
        raise DataError(f"{error}\n(dataset={cfg.dataset}, data_root={cfg.data_root}; set "
                        "--data_root, or try the offline quickstart: --config "
                        "configs/quickstart_digits.yaml)") from None
    classes = list(train_set.classes)
    if len(classes) != spec.num_classes:  # a subset of a fixed-size dataset: ImageNet-100
        warn(f"{cfg.dataset} has {spec.num_classes} classes, the training set under "
             f"--data_root {cfg.data_root} has {len(classes)}: the network scores those "
             f"{len(classes)}")
        spec = dataclasses.replace(spec, num_classes=len(classes))
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.train_subset and cfg.train_subset < len(train_set):
        train_set = Subset(train_set, torch.randperm(len(train_set), generator=generator)
                           [: cfg.train_subset].tolist())
    if cfg.val_subset and cfg.val_subset < len(val_set):
        val_set = Subset(val_set, torch.randperm(len(val_set), generator=generator)
                         [: cfg.val_subset].tolist())
    if len(val_set) == 0:
        raise DataError(f"the validation set of {cfg.dataset} has no images (--val_fraction "
                        f"{cfg.val_fraction} of the training images, or an empty val/): the "
                        "plateau schedule and best.pt are decided on validation accuracy. "
                        "Raise --val_fraction or add validation images")
    micro = cfg.micro_batch_size or cfg.batch_size // world
    if micro == 0 or cfg.batch_size % (micro * world):
        raise ConfigError(f"batch_size {cfg.batch_size} is not micro_batch_size ({micro}) x "
                          f"processes ({world}) x accumulation steps; choose values that "
                          "divide it")
    accumulation = cfg.batch_size // (micro * world)
    if len(train_set) == 0:
        raise DataError(f"the training set of {cfg.dataset} has no images" + (
            f" left: --val_fraction {cfg.val_fraction} holds out all of them; lower it"
            if cfg.val_fraction else f" under --data_root {cfg.data_root}"))
    if len(train_set) < world:
        raise DataError(f"the training set has {len(train_set)} samples, fewer than the "
                        f"{world} processes")
    train_loader = train_batches(cfg, train_set, micro, rank, world, torch.device(device))
    sampler = train_loader.sampler
    val_loader = build_loader(val_set, micro, train=False, workers=cfg.workers,
                              sampler=ShardSampler(val_set, rank, world))
    steps_per_epoch = math.ceil(math.ceil(sampler.per_rank() / micro) / accumulation)
    return Data(spec, classes, image_size, scale, train_set, val_set, sampler, train_loader,
                val_loader, micro, accumulation, steps_per_epoch)


def train_batches(cfg: Any, train_set: SplitDataset, micro: int, rank: int, world: int,
                  device: torch.device):
    """The training loader for --data_pipeline: DataLoader workers transforming samples
    (cpu), or the device augmenting whole batches of the same TrainTransform (gpu): the
    in-memory datasets held on the device, image files decoded there. All three deal the
    same order (ResumableSampler) and resume at (epoch, position)."""
    dataset: Dataset
    dataset, indices = train_set, list(range(len(train_set)))
    if isinstance(train_set, Subset):  # --train_subset
        dataset, indices = train_set.dataset, list(train_set.indices)
    assert isinstance(dataset, ArrayDataset | ImageFileDataset)  # build_dataset's
    files = dataset.files if isinstance(dataset, ImageFileDataset) else None
    sharded = isinstance(files, ShardSamples)
    if cfg.shuffle == "shard" and not sharded:
        raise ConfigError("--shuffle shard orders a shard set's images by shard, and "
                          f"--data_root {cfg.data_root} holds image files or arrays: write a "
                          "shard set (python -m vgg.data.shards) or use --shuffle global")
    if cfg.data_pipeline == "workers":
        chunks = (files.shard[indices] if cfg.shuffle == "shard"  # then sharded (above)
                  and isinstance(files, ShardSamples) else None)
        sampler = ResumableSampler(len(train_set), cfg.seed, rank, world, with_seeds=True,
                                   chunks=chunks)
        return build_loader(SeededSamples(train_set), micro, train=True, workers=cfg.workers,
                            drop_last=False, sampler=sampler)
    if sharded:
        raise ConfigError("--data_pipeline device decodes image files on the device, and "
                          f"--data_root {cfg.data_root} is a shard set: use --data_pipeline "
                          "workers, or train on the image files")
    assert isinstance(dataset.transform, TrainTransform)  # the one build_data made
    transform = BatchTrainTransform(dataset.transform)
    common = {"device": device, "seed": cfg.seed, "rank": rank, "world": world}
    labels = dataset.labels[indices]
    if isinstance(dataset, ArrayDataset):
        return ResidentLoader(dataset.images[indices], labels, transform, micro, **common)
    if device.type == "cpu" and rank == 0:
        warn("--data_pipeline device on a CPU decodes and augments image files more slowly "
             "per core than --data_pipeline workers (JPEG decoding and float sampling "
             "against OpenCV's decode and uint8 warp: README, Benchmarks); it is the faster "
             "choice on a CPU for in-memory datasets only. Use --data_pipeline workers here")
    names: Sequence[str] = dataset.files  # FileList's __getitem__ types int and slice alike
    return JpegLoader([names[i] for i in indices], labels, transform, micro,
                      threads=max(cfg.workers, 1), **common)
