"""The built-in datasets' registrations: MNIST, FashionMNIST, CIFAR-10/100, scikit-learn's
digits, ImageNet and ImageFolder.

Normalisation constants are the statistics of the images as the network sees them: MNIST
and FashionMNIST padded to 32x32 (mean_32 = mean_28 * 784/1024 of the well-known 28x28
0.1307 and 0.2860, since the padding is background).
"""

from __future__ import annotations

import torchvision

from vgg.data.image_folders import image_folder_reader, image_folder_spec
from vgg.data.imagenet import read_imagenet
from vgg.data.readers import cifar_reader, mnist_reader, read_digits
from vgg.data.registry import DatasetSpec, register
from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD

register("Mnist", DatasetSpec("Mnist", 10, 1, 32, (0.1000,), (0.2752,), hflip=False,
                              train_scale=(32, 32), crop_padding=4),
         mnist_reader("MNIST", [str(d) for d in range(10)], torchvision.datasets.MNIST))
register("FashionMnist",
         DatasetSpec("FashionMnist", 10, 1, 32, (0.2190,), (0.3318,), hflip=True,
                     train_scale=(32, 32), crop_padding=4),
         mnist_reader("FashionMNIST", torchvision.datasets.FashionMNIST.classes,
                      torchvision.datasets.FashionMNIST))
register("Cifar10",
         DatasetSpec("Cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                     hflip=True, train_scale=(32, 32), crop_padding=4),
         cifar_reader("CIFAR-10", "cifar-10-batches-py",
                      {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                      "batches.meta", b"label_names", b"labels", torchvision.datasets.CIFAR10))
register("Cifar100",
         DatasetSpec("Cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                     hflip=True, train_scale=(32, 32), crop_padding=4),
         cifar_reader("CIFAR-100", "cifar-100-python", {"train": ["train"], "test": ["test"]},
                      "meta", b"fine_label_names", b"fine_labels", torchvision.datasets.CIFAR100),
         aliases=["Cifar"])
register("Digits", DatasetSpec("Digits", 10, 1, 32, (0.3050,), (0.3757,), hflip=False,
                               train_scale=(32, 32), crop_padding=4),
         read_digits)
register("ImageNet",
         DatasetSpec("ImageNet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD,
                     hflip=True, train_scale=(256, 256)),
         read_imagenet)
register("ImageFolder", image_folder_spec, image_folder_reader())
