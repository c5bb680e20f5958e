"""The dataset registry (vgg/data/registry.py): the built-in names, their specs, and lookups
that are case-insensitive and fail as a user error listing the choices."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_class import DATASETS, DatasetSpec, build_dataset, dataset_spec, register
from tests.fakedata import write_image_folder
from vgg.data import SPLITS
from vgg.data.errors import DatasetError
from vgg.errors import UserError


def test_every_requested_name_is_registered_with_a_consistent_spec():
    for name in ["Mnist", "FashionMnist", "Cifar10", "Cifar", "Cifar100", "ImageNet",
                 "ImageFolder", "Digits"]:
        assert name in DATASETS
    assert dataset_spec("Cifar") == dataset_spec("Cifar100")
    assert dataset_spec("mnist") == dataset_spec("Mnist")  # names are case-insensitive
    for name in DATASETS:
        if name == "ImageFolder":
            continue
        spec = dataset_spec(name)
        assert spec.image_size % 32 == 0
        assert len(spec.mean) == len(spec.std) == spec.in_channels
    assert (dataset_spec("Cifar100").num_classes, dataset_spec("ImageNet").num_classes) == (100,
                                                                                         1000)
    assert not dataset_spec("Mnist").hflip and not dataset_spec("Digits").hflip


def test_unknown_names_and_bad_arguments_are_value_errors_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'Svhn'.*Mnist.*Cifar10.*ImageNet"):
        dataset_spec("Svhn")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("Svhn", "train", tmp_path, np.asarray)
    with pytest.raises(ValueError, match="split must be one of .*'train', 'val', 'test'"):
        build_dataset("Digits", "validation", tmp_path, np.asarray)
    with pytest.raises(ValueError, match="on_corrupt"):
        build_dataset("Digits", "train", tmp_path, np.asarray, on_corrupt="ignore")
    with pytest.raises(ValueError, match="dataset_spec\\('ImageFolder', root\\)"):
        dataset_spec("ImageFolder")


def test_mistakes_a_user_can_make_are_user_errors_that_say_names_ignore_case(tmp_path):
    """The command-line tools turn a UserError into one paragraph and exit code 2; a plain
    ValueError would be a traceback."""
    with pytest.raises(UserError, match="unknown dataset 'Svhn'.*case-insensitive"):
        dataset_spec("Svhn")
    for call in [lambda: build_dataset("Digits", "validation", tmp_path, np.asarray),
                 lambda: build_dataset("Digits", "train", tmp_path, np.asarray,
                                       on_corrupt="ignore"),
                 lambda: build_dataset("Digits", "train", tmp_path, np.asarray,
                                       val_fraction=1.5),
                 lambda: dataset_spec("imagefolder")]:
        with pytest.raises(UserError):
            call()
    assert len(build_dataset("dIgItS", "test", tmp_path, np.asarray)) == 359


def test_a_name_differing_from_a_registered_one_only_in_case_is_refused():
    spec = DatasetSpec("mnist", 10, 1, 32, (0.5,), (0.5,), hflip=False, train_scale=(32, 32))
    with pytest.raises(DatasetError, match="'mnist' differs from the registered 'Mnist'"):
        register("mnist", spec, DATASETS["Mnist"].read)
    assert dataset_spec("MNIST") == dataset_spec("Mnist") != spec


def docstring_examples(doc: str) -> list[str]:
    """The indented code blocks of a docstring, dedented (blank lines inside kept)."""
    blocks, current = [], []
    for line in doc.splitlines() + ["end"]:
        if line.startswith("    ") or (current and not line):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    return blocks


def test_the_worked_examples_in_dataset_class_register_working_datasets(tmp_path):
    import dataset_class

    examples = docstring_examples(dataset_class.__doc__)
    assert [e.split("(")[0] for e in examples] == ["register", "def read_shapes"]
    write_image_folder(tmp_path / "flowers", ["daisy", "rose"], per_class=3,
                       splits=("train", "val", "test"))
    rng = np.random.default_rng(0)
    (tmp_path / "shapes").mkdir()
    for split in ("train", "test"):
        np.savez(tmp_path / "shapes" / f"{split}.npz",
                 images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 3, 20))
    try:
        for example in examples:
            exec(example, {**vars(dataset_class), "np": np})
        flowers = build_dataset("flowers", "test", tmp_path, np.asarray)
        assert flowers.classes == ("daisy", "rose") and len(flowers) == 6
        assert dataset_spec("Flowers").num_classes == 5
        shapes = {s: build_dataset("Shapes", s, tmp_path, np.asarray) for s in SPLITS}
        assert [len(shapes[s]) for s in SPLITS] == [18, 2, 20]
        assert shapes["test"].classes == ("circle", "square", "triangle")
    finally:
        DATASETS.pop("Flowers", None)
        DATASETS.pop("Shapes", None)


def test_a_reader_returning_none_for_train_or_test_is_an_error_naming_it(tmp_path):
    """None means "no validation split of its own", for "val" only."""
    register("NoneReader", dataset_spec("Digits"), lambda root, split, download: None)
    try:
        for split in ("train", "test"):
            with pytest.raises(UserError, match=f"reader of dataset 'NoneReader' returned "
                                                f"None for its '{split}' split"):
                build_dataset("NoneReader", split, tmp_path, np.asarray)
    finally:
        del DATASETS["NoneReader"]
