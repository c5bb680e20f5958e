"""Shard sets (python -m vgg.data.shards, vgg/data/shard_set.py): written from real image
trees into real tar files, they train as the files do, resume exactly, shuffle by shard
deterministically, and refuse damaged, foreign or stale shards in one paragraph."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import Config
from vgg.checkpoint import load_checkpoint
from vgg.data import DatasetError, split_images
from vgg.data.sampling import ResumableSampler, chunked_permutation
from vgg.data.shards import main as shards_main
from vgg.data.shards import write_shard_set
from vgg.errors import UserError
from vgg.provenance import split_fingerprint
from vgg.run_log import MetricsLog
from vgg.train_data import build_data

try:
    import webdataset  # noqa: F401
    HAVE_WEBDATASET = True
except ImportError:
    HAVE_WEBDATASET = False
needs_webdataset = pytest.mark.skipif(not HAVE_WEBDATASET, reason="webdataset not installed")

CLASSES = ("cat", "dog", "eel")


def write_tree(root: Path, per_class: int = 6, splits=("train", "val"), seed: int = 0,
               extension: str = "mixed") -> None:
    """Noise images (every pixel its own), so that equal pixels mean the same image: JPEGs
    and PNGs alternating, or all of one `extension` (".bmp": every file the same size)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                ext = extension if extension != "mixed" else (".jpg", ".png")[i % 2]
                image = rng.integers(0, 256, (18 + i, 20, 3), np.uint8)
                assert cv2.imwrite(str(root / split / name / f"{i}{ext}"), image)


def shard_config(root: Path, **changes) -> Config:
    return Config(**{"dataset": "ImageFolder", "data_root": str(root), "image_size": 32,
                     "batch_size": 4, "model_version": "A", "workers": 0, **changes})


def samples(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "shards"
    write_tree(src)
    return src, dst


@needs_webdataset
def test_a_sharded_run_and_a_file_run_see_identical_pixels_and_labels(tree):
    """Through train_data's loaders: the same seed gives the same augmented pixels and labels
    from the shards as from the files, training and validation, with workers or without.
    (Mutations: the writer storing each image under the next sample's key, or names
    relative to the split's folder rather than the data root, fail it.)"""
    src, dst = tree
    write_shard_set(src, dst, workers=2, samples_per_shard=5)
    files, shards = build_data(shard_config(src), 0, 1), build_data(shard_config(dst), 0, 1)
    assert shards.classes == files.classes == list(CLASSES)
    assert shards.spec == files.spec  # statistics measured from the same pixels
    for part in ("train_set", "val_set"):  # provenance: the same dataset
        assert split_fingerprint(getattr(shards, part), dst) == \
            split_fingerprint(getattr(files, part), src)
    with_workers = build_data(shard_config(dst, workers=2), 0, 1)
    for part in ("train_loader", "val_loader"):
        expected = samples(getattr(files, part))
        for data in (shards, with_workers):
            got = samples(getattr(data, part))
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@needs_webdataset
@pytest.mark.parametrize("shuffle", ["global", "shard"])
def test_training_on_shards_resumes_exactly_mid_epoch(tree, shuffle):
    """Interrupted after 2 batches of epoch 1 and resumed (in a new process's data, with
    worker processes this time), the rest of the epoch is exactly what the uninterrupted
    run saw. (Mutation: ResumableSampler ignoring `start` fails it.)"""
    src, dst = tree
    write_shard_set(src, dst, workers=1, samples_per_shard=4)
    whole = build_data(shard_config(dst, shuffle=shuffle), 0, 1)
    whole.sampler.set_epoch(1, 0)
    expected = samples(whole.train_loader)
    resumed = build_data(shard_config(dst, shuffle=shuffle, workers=2), 0, 1)
    resumed.sampler.set_epoch(1, 2 * 4)
    got = samples(resumed.train_loader)
    assert torch.equal(got[0], expected[0][8:]) and torch.equal(got[1], expected[1][8:])


def test_the_chunked_shuffle_is_a_deterministic_permutation_shard_after_shard():
    """(seed, epoch) alone decide it; it is a permutation; each shard's samples come
    together (shards change 5 - 1 times along the order), in an order that changes with
    the epoch. (Mutation: dropping the argsort's chunk key fails the grouping.)"""
    chunks = torch.tensor([3, 0, 1, 4, 2] * 6)  # 5 shards of 6, interleaved

    def order(seed, epoch):
        sampler = ResumableSampler(len(chunks), seed, 0, 1, chunks=chunks.numpy())
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(7, 0)
    assert sorted(first) == list(range(30)) and first == order(7, 0)
    assert first != order(8, 0) and first != order(7, 1)
    runs = chunks[first]
    assert int((runs[1:] != runs[:-1]).sum()) == 4
    for seed in range(5):
        permutation = chunked_permutation(chunks, torch.Generator().manual_seed(seed))
        assert sorted(permutation.tolist()) == list(range(30))


@needs_webdataset
def test_an_interrupted_writing_resumes_keeping_the_finished_shards(tree):
    """A run that died after some shards (no index yet) is finished by running the command
    again: the finished shards are kept as they are, the missing one is written the same
    bytes as an uninterrupted run writes. (Mutation: writing every shard again, not only
    the unfinished ones, fails the kept-inode check.)"""
    src, dst = tree
    write_shard_set(src, dst, workers=2, samples_per_shard=5)
    complete = {p.name: p.read_bytes() for p in dst.iterdir()}
    (dst / "train.index.npz").unlink()
    (dst / "train-000002.tar").unlink()
    kept = (dst / "train-000000.tar").stat().st_ino
    with pytest.raises(DatasetError, match="it keeps the finished shards"):
        split_images("ImageFolder", "train", dst)
    write_shard_set(src, dst, workers=2, samples_per_shard=5)
    assert (dst / "train-000000.tar").stat().st_ino == kept
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == complete


@needs_webdataset
def test_the_shards_are_webdataset_tars_of_the_files_bytes(tree):
    """Read by the tarfile module, not by the toolkit: each sample is the source file's
    bytes and its label as WebDataset's .cls (class index as text)."""
    src, dst = tree
    write_shard_set(src, dst, samples_per_shard=7)
    train = split_images("ImageFolder", "train", src)
    members = {}
    for shard in sorted(dst.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar})
    assert len(members) == 2 * len(train)
    for i, path in enumerate(train.images):
        key = next(name for name in members if name.endswith(f"_{i:09d}.cls")).removesuffix(".cls")
        assert members[f"{key}.cls"] == str(train.labels[i]).encode()
        assert members[f"{key}{Path(path).suffix}"] == Path(path).read_bytes()


@needs_webdataset
def test_unreadable_files_are_reported_by_the_writer_and_skipped_as_training_skips_them(
        tree, capsys):
    src, dst = tree
    broken = src / "train" / "dog" / "9.jpg"
    broken.write_bytes(b"\xff\xd8 not a JPEG")
    assert shards_main([str(src), str(dst), "--workers", "1"]) == 0
    assert f"could not read 1 file(s): {broken}" in capsys.readouterr().err
    data = build_data(shard_config(dst), 0, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples(data.train_loader)
    skipped = [str(w.message) for w in caught if "unreadable image" in str(w.message)]
    assert len(skipped) == 1 and "skipped 1 unreadable image file(s)" in skipped[0]
    assert "dog/9.jpg" in skipped[0]


def test_without_webdataset_the_writer_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    write_tree(tmp_path / "src", per_class=2, splits=("train",))
    assert shards_main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "pip install webdataset==" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "dst").exists()


# ------------------------------------------------------------------ bad input, nothing lost

def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_refused(dst: Path, error: type[Exception], message: str) -> None:
    """Training on `dst` stops with `error` saying `message`, and changes nothing there."""
    before = snapshot(dst)
    with pytest.raises(error, match=message):
        build_data(shard_config(dst), 0, 1)
    assert snapshot(dst) == before


@needs_webdataset
def test_a_truncated_shard_is_refused_before_training(tree):
    """(Mutation: not comparing a shard's size with the index's fails it.)"""
    src, dst = tree
    write_shard_set(src, dst, samples_per_shard=5)
    shard = dst / "train-000001.tar"
    os.truncate(shard, shard.stat().st_size - 1024)
    assert_refused(dst, DatasetError, "train-000001.tar has .* bytes.*truncated")


@needs_webdataset
def test_a_missing_index_says_to_run_the_writer_again(tree):
    """(Mutation: treating a folder of shards without index as no shard set fails it.)"""
    src, dst = tree
    write_shard_set(src, dst, samples_per_shard=5)
    (dst / "train.index.npz").unlink()
    assert_refused(dst, UserError, "but not their index train.index.npz")
    # The data is there, incomplete: no hint to try the quickstart's offline data instead.
    with pytest.raises(UserError) as refused:
        build_data(shard_config(dst), 0, 1)
    assert "quickstart" not in str(refused.value)


@needs_webdataset
def test_a_split_from_another_dataset_is_refused(tree, tmp_path):
    """val shards of a dataset with other classes, copied beside these train shards.
    (Mutation: not comparing the splits' classes fails it.)"""
    src, dst = tree
    write_shard_set(src, dst, samples_per_shard=5)
    other = tmp_path / "other"
    for name in ("ant", "bee"):
        shutil.copytree(src / "train" / "cat", other / "train" / name)
        shutil.copytree(src / "val" / "cat", other / "val" / name)
    write_shard_set(other, tmp_path / "other_shards", samples_per_shard=5)
    for path in (tmp_path / "other_shards").glob("val*"):
        shutil.copy(path, dst / path.name)
    assert_refused(dst, DatasetError, "val.index.npz is of another dataset: its classes")


@needs_webdataset
def test_a_shard_of_another_shard_set_is_refused_even_of_the_same_size(tmp_path):
    """BMPs of one size make every shard the same size: only the sample names tell a shard
    written with another seed apart. (Mutation: skipping the first-sample name check.)"""
    src = tmp_path / "src"
    write_tree(src, per_class=4, extension=".bmp")
    for path in src.rglob("*.bmp"):  # one size for all: crop to the smallest
        cv2.imwrite(str(path), cv2.imread(str(path))[:18])
    write_shard_set(src, tmp_path / "a", samples_per_shard=4, seed=0)
    write_shard_set(src, tmp_path / "b", samples_per_shard=4, seed=1)
    shutil.copy(tmp_path / "b" / "train-000001.tar", tmp_path / "a" / "train-000001.tar")
    with pytest.raises(DatasetError, match="comes from another shard set"):
        split_images("ImageFolder", "train", tmp_path / "a")


@needs_webdataset
def test_writing_into_a_stale_shard_set_after_the_tree_changed_is_refused(tree):
    """The source gained an image since its shards were written: running the writer into
    the same folder again would mix two states of the tree. It refuses and changes
    nothing. (Mutation: a tag that leaves the names out fails it.)"""
    src, dst = tree
    write_shard_set(src, dst, samples_per_shard=5)
    before = snapshot(dst)
    shutil.copy(src / "train" / "cat" / "0.jpg", src / "train" / "cat" / "new.jpg")
    with pytest.raises(UserError, match="changed since .* shards were written"):
        write_shard_set(src, dst, samples_per_shard=5)
    assert snapshot(dst) == before


@needs_webdataset
def test_imagenet_with_its_flat_devkit_labelled_val_trains_the_same_from_shards(tmp_path):
    """ImageNet as released: val/ flat, labelled by the devkit in no class order. Every
    split read from the shards has the files' labels and pixels, in the files' order. Its
    test split is its val (the official validation set): written once, indexed twice.
    (Mutations: the index storing the labels sorted, or writing test's shards, fail it.)"""
    from tests.fakedata import write_imagenet_folders
    from vgg.data.imageset import decode_at

    src, dst = tmp_path / "src", tmp_path / "shards"
    write_imagenet_folders(src, ["n01", "n02", "n03"], per_class=3, devkit=True)
    write_shard_set(src, dst, dataset="ImageNet", samples_per_shard=4)
    for split in ("train", "val", "test"):
        files = split_images("ImageNet", split, src, val_fraction=None)
        shards = split_images("ImageNet", split, dst, val_fraction=None)
        assert shards.classes == files.classes and np.array_equal(shards.labels, files.labels)
        for i in range(len(files)):
            assert np.array_equal(decode_at(shards.images, i), decode_at(files.images, i))
    written = sorted(p.name for p in dst.iterdir())
    assert not [name for name in written if name.startswith("test-")]
    assert "test.index.npz" in written  # and val: 9 images in shards of 4
    assert len([n for n in written if n.startswith("val-")]) == 3
    write_shard_set(src, dst, dataset="ImageNet", samples_per_shard=4)  # a rerun: the same
    assert sorted(p.name for p in dst.iterdir()) == written


@needs_webdataset
@pytest.mark.slow
def test_two_ranks_train_on_shards_exactly_as_on_the_files(tmp_path):
    """The cluster case (issue 19): torchrun's two gloo processes each read their half of
    every epoch from the shards by random access, through a loader worker, and end with
    bit-for-bit the weights and metrics of the same run on the files without workers.
    (Mutation: one sample in four read from another index entry fails it at the weights.)"""
    src, dst = tmp_path / "src", tmp_path / "shards"
    write_tree(src, per_class=8)
    write_shard_set(src, dst, workers=2, samples_per_shard=5)
    runs = {}
    for name, root, workers in (("files", src, "0"), ("shards", dst, "1")):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "2", "train.py", "--dataset", "ImageFolder",
                   "--data_root", str(root), "--image_size", "32", "--model_version", "A",
                   "--width", "0.25", "--fc_width", "16", "--batch_size", "4",
                   "--micro_batch_size", "2", "--epochs", "2", "--workers", workers,
                   "--device", "cpu", "--wandb", "disabled", "--progress", "false",
                   "--log_interval", "1", "--out_dir", str(tmp_path / "runs"),
                   "--run_name", name]
        run = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], timeout=900,
                             capture_output=True, text=True,
                             env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stdout + run.stderr
        assert "2 process(es)" in run.stdout
        runs[name] = tmp_path / "runs" / name
    files, shards = (load_checkpoint(runs[n] / "last.pt") for n in ("files", "shards"))
    assert files["step"] == shards["step"] == 2 * 24 // 4  # 2 epochs of 24 images, 4 a step
    for key, tensor in files["model"].items():
        assert torch.equal(tensor, shards["model"][key]), key
    losses = [[(r["step"], r.get("loss"), r.get("val_loss"))
               for r in MetricsLog.read(runs[n] / "metrics.jsonl")] for n in ("files", "shards")]
    assert losses[0] == losses[1]
