"""Datasets by name: the registry, the file-format readers, the splits, the torch Datasets
and their loaders. Importing it registers the built-in datasets (vgg.data.builtin); a user's
own registrations live in dataset_class.py.

    spec = dataset_spec("Cifar10")
    train = build_dataset("Cifar10", "train", "data", train_transform(spec, spec.image_size))
    loader = build_loader(train, 128, train=True, workers=4)
"""

from vgg.data import builtin  # noqa: F401  (registers the built-in datasets)
from vgg.data.datasets import ArrayDataset, ImageFileDataset, build_dataset
from vgg.data.decoding import IMAGE_EXTENSIONS, decode_image
from vgg.data.errors import DatasetError, DatasetNotFoundError, UnreadableImageError
from vgg.data.image_folders import image_folder_reader, image_folder_spec
from vgg.data.imageset import ImageSet, holdout
from vgg.data.loading import EpochLoader, build_loader
from vgg.data.readers import cifar_reader, mnist_reader
from vgg.data.registry import DATASETS, DatasetSpec, Reader, Registered, register
from vgg.data.splits import DEFAULT_VAL_FRACTION, SPLITS, dataset_spec, split_images
from vgg.data.statistics import image_statistics
from vgg.transforms import eval_transform, train_transform

__all__ = [
    "DATASETS", "DEFAULT_VAL_FRACTION", "IMAGE_EXTENSIONS", "SPLITS", "ArrayDataset",
    "DatasetError", "DatasetNotFoundError", "DatasetSpec", "EpochLoader", "ImageFileDataset",
    "ImageSet", "Reader", "Registered", "UnreadableImageError", "build_dataset",
    "build_loader", "cifar_reader", "dataset_spec", "decode_image", "eval_transform",
    "holdout", "image_folder_reader", "image_folder_spec", "image_statistics",
    "mnist_reader", "register", "split_images", "train_transform",
]
