"""Where you add your own dataset: one `register` call at the end of this file.

Every dataset is known by name (case-insensitive) to `--dataset`; its spec gives the
network its classes, channels, training size and normalisation, and its reader returns
the images of a split. The built-in ones (Mnist, FashionMnist, Cifar10, Cifar100 alias
Cifar, Digits, ImageNet, ImageFolder) and the machinery live in `vgg/data/`.

A folder of images in class sub-folders, under a name of its own:

    register("Flowers",
             DatasetSpec("Flowers", num_classes=5, in_channels=3, image_size=224,
                         mean=(0.46, 0.42, 0.30), std=(0.29, 0.26, 0.28),
                         hflip=True, train_scale=(256, 256)),
             image_folder_reader("flowers"))  # <data_root>/flowers/{train,val,test}/<class>/

mean/std: `image_statistics(files)` of the training images, or register the spec as
`image_folder_spec` to have them measured on every run. Data held in memory: a reader
`read(root, split, download)` that returns ImageSet(uint8 images (N, H, W[, 3]), int64
labels, class names) for "train" and "test", and None for "val" (a seeded share of "train"
is then held out):

    def read_shapes(root, split, download):
        if split == "val":
            return None
        data = np.load(root / "shapes" / f"{split}.npz")
        return ImageSet(data["images"], data["labels"].astype(np.int64),
                        ("circle", "square", "triangle"))

    register("Shapes", DatasetSpec("Shapes", 3, 3, 32, (0.5,) * 3, (0.25,) * 3, hflip=True,
                                   train_scale=(32, 32), crop_padding=4), read_shapes)

An ImageFolder (`--dataset ImageFolder --data_root <folder>`, or `image_folder_reader`)
has one of three layouts:

- train/ val/ test/: train/ trains, val/ takes the learning-rate decisions and picks the
  best checkpoint, test/ gives the unbiased number (evaluate.py's default split). val/ may
  also be named validation/ or valid/ (one of the three, not two).
- train/ val/: the same, but nothing is left for an unbiased number; evaluate.py says so
  and offers `--split val`, optimistic since val/ chose the checkpoint.
- train/ only, or the class folders directly in the data root: a seeded 10% of the
  training images (--val_fraction) is held out as the validation split; no test split.

Labels number the sorted class folders of the training images; val/ and test/ are labelled
by those names and may lack a class but not add one. Statistics are measured on the
training split only, never on the images held out for validation.

Validation split (`val_fraction`, build_dataset's and --val_fraction): None, the default,
takes the dataset's own validation split where it has one (ImageNet's official validation
set, on which the paper took its plateau decisions; an ImageFolder's val/), training on all
of the training images, and holds a seeded 10% out elsewhere. A number holds that share of
the training images out in every case, leaving the dataset's own validation set untouched.
"""

# What a registration needs, and the names train.py, evaluate.py, the benchmarks and the
# notebook import from here.
from vgg.data import (
    DATASETS,
    DatasetNotFoundError,
    DatasetSpec,
    ImageFileDataset,
    ImageSet,
    UnreadableImageError,
    build_dataset,
    build_loader,
    dataset_spec,
    eval_transform,
    image_folder_reader,
    image_folder_spec,
    image_statistics,
    register,
    train_transform,
)

__all__ = [
    "DATASETS", "DatasetNotFoundError", "DatasetSpec", "ImageFileDataset", "ImageSet",
    "UnreadableImageError", "build_dataset", "build_loader", "dataset_spec",
    "eval_transform", "image_folder_reader", "image_folder_spec", "image_statistics",
    "register", "train_transform",
]

# ------------------------------------------------------------ your own datasets go below
