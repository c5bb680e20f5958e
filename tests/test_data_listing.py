"""The file index of image folders (vgg/data/listing.py), on real trees: taken once and read
by every later process and every rank while the tree is unchanged, listed again when it
changes, rebuilt when damaged, held as arrays rather than Python strings."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fakedata import settle, write_image_folder, write_imagenet_folders
from vgg.data import ImageFileDataset, ImageSet, build_dataset
from vgg.data.file_list import FileList
from vgg.data.listing import folders_listed

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["b", "a b", "é", "10", "9"]
NOT_UTF8 = os.fsdecode(b"\xff.png")  # a name a Linux file system allows, but not UTF-8


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """A user cache of the test's own: nothing is written to the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "vgg" / "index"


def restart(name: str, split: str, root: Path) -> dict:
    """What a new process sees of a split (tests/list_data.py): files relative to root."""
    result = subprocess.run([sys.executable, "-m", "tests.list_data", name, split, str(root)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    return {**seen, "files": [str(Path(f).relative_to(root)) for f in seen["files"]]}


_spellings = itertools.count()


def again(root: Path, name: str = "ImageFolder", split: str = "train") -> dict:
    """What this process sees of a split when it reaches ``root`` by a path it has not used
    (a new symbolic link): the listings it keeps in memory, by path, do not apply, so it
    reads the index on disk or lists. Files relative to root, and the folders it listed."""
    link = root.parent / f"link-{next(_spellings)}"
    link.symlink_to(root)
    listed = folders_listed()
    dataset = build_dataset(name, split, link, np.asarray)
    return {"listed": folders_listed() - listed, "labels": dataset.labels.tolist(),
            "files": [str(Path(f).relative_to(link)) for f in dataset.files],
            "classes": list(dataset.classes)}


def write_tree(root: Path) -> Path:
    """<root>/data: train/ and val/ of an ImageFolder whose names sort differently as bytes,
    as numbers and as text, with a file that is not an image, a hidden one and a name not in
    UTF-8 (hidden class folders are skipped, hidden images are not). Returns the data
    root."""
    data = root / "data"
    write_image_folder(data, CLASSES, per_class=3, size=(8, 8), splits=("train", "val"))
    for name in ("10.png", "9.png", "Z.PNG", ".hidden.png", "notes.txt", NOT_UTF8):
        shutil.copy(data / "train" / "b" / "0.png", data / "train" / "a b" / name)
    settle(data)
    return data


def fresh_listing(root: Path, split: str = "train") -> dict:
    """Files (relative to root), labels and classes of a folder of class folders, by the
    standard library: sorted class folders, sorted image names in each, labelled by their
    class's position."""
    folder = root / split
    classes = sorted(c for c in os.listdir(folder) if (folder / c).is_dir() and c[0] != ".")
    pairs = [(f"{split}/{c}/{f}", label) for label, c in enumerate(classes)
             for f in sorted(os.listdir(folder / c))
             if f.lower().endswith(".png")]  # hidden images too, as always
    return {"files": [f for f, _ in pairs], "labels": [label for _, label in pairs],
            "classes": classes}


def same(seen: dict, expected: dict) -> bool:
    return all(seen[key] == expected[key] for key in ("files", "labels", "classes"))


def test_a_restart_reads_the_index_and_sees_what_a_fresh_listing_sees(tmp_path):
    data = write_tree(tmp_path)
    expected = fresh_listing(data)
    assert len(expected["files"]) == 20 and f"train/a b/{NOT_UTF8}" in expected["files"]
    first = again(data)
    assert first["listed"] == 2 * len(CLASSES)  # val/'s class folders, then train/'s
    index = data / ".train.vgg-index-classes.npz"
    written = index.stat().st_mtime_ns
    second = restart("ImageFolder", "train", data)
    assert second["listed"] == 0 and index.stat().st_mtime_ns == written  # read, not taken
    assert same(first, expected) and same(second, expected)


def test_imagenet_flat_validation_set_is_indexed_too(tmp_path):
    wnids = ["n01440764", "n01443537", "n02119789"]
    write_imagenet_folders(tmp_path / "data" / "ImageNet", wnids, per_class=2, devkit=True)
    settle(tmp_path / "data")
    first, second = (again(tmp_path / "data", "ImageNet", "val") for _ in range(2))
    assert (first["listed"], second["listed"]) == (1, 0)
    val = tmp_path / "data" / "ImageNet" / "val"
    assert second["files"] == first["files"] == [f"ImageNet/val/{f}"
                                                 for f in sorted(os.listdir(val))]
    assert second["labels"] == first["labels"] and len(first["labels"]) == 6
    assert (val.parent / ".val.vgg-index-flat.npz").is_file()


@pytest.mark.parametrize("change", ["file added", "class folder added", "file renamed"])
def test_a_changed_tree_is_listed_again(tmp_path, change):
    data = write_tree(tmp_path)
    assert again(data)["listed"] == 2 * len(CLASSES)
    assert again(data)["listed"] == 0
    train = data / "train"
    new = train / ("ant" if change == "class folder added" else "b")
    new.mkdir(exist_ok=True)
    if change == "file renamed":
        os.rename(train / "b" / "1.png", new / "7.png")
    else:
        shutil.copy(train / "9" / "0.png", new / "7.png")
    for when in ("seconds ago", "long ago"):  # unsettled: listed, not written; then written
        seen = again(data)
        assert seen["listed"] > 0 and f"train/{new.name}/7.png" in seen["files"], when
        assert same(seen, fresh_listing(data)), when
        settle(data, when=1_700_000_100)
    assert again(data)["listed"] == 0


class RunsCode:
    """An object whose unpickling creates a file: proof that a pickle was run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def damage(index: Path, how: str, proof: Path) -> None:
    if how == "truncated":
        index.write_bytes(index.read_bytes()[:index.stat().st_size // 2])
    elif how == "not an index":
        index.write_bytes(b"PK\x03\x04 not a zip at all")
    else:
        with np.load(index) as data:
            arrays = dict(data)
        if how == "offsets past the paths":
            arrays["offsets"][-1] += 5
        else:  # "a pickle inside"
            arrays["paths"] = np.array([RunsCode(proof)], dtype=object)
        with open(index, "wb") as f:
            np.savez(f, **arrays)


@pytest.mark.parametrize("how", ["truncated", "not an index", "offsets past the paths",
                                 "a pickle inside"])
def test_a_damaged_index_is_ignored_with_a_warning_and_rewritten(tmp_path, capsys, how):
    data = write_tree(tmp_path)
    first = again(data)
    index, proof = data / ".train.vgg-index-classes.npz", tmp_path / "pickle-ran"
    damage(index, how, proof)
    seen = again(data)
    warning = capsys.readouterr().err
    assert f"the file index {index} is damaged" in warning and "listed again" in warning
    assert seen["listed"] == len(CLASSES) and not proof.exists()  # train/ alone: val/ read
    assert same(seen, first) and same(seen, fresh_listing(data))
    assert again(data)["listed"] == 0 and capsys.readouterr().err == ""  # rewritten whole


def test_where_the_data_is_read_only_the_index_goes_to_the_user_cache(tmp_path, user_cache,
                                                                       monkeypatch, capsys):
    data = write_tree(tmp_path)
    for split in ("train", "val"):  # no index file can go beside the folders
        (data / f".{split}.vgg-index-classes.npz").mkdir()
    settle(data)
    first = again(data)
    assert first["listed"] == 2 * len(CLASSES) and capsys.readouterr().err == ""
    assert sorted(p.name[16:] for p in user_cache.iterdir()) == [
        ".train.vgg-index-classes.npz", ".val.vgg-index-classes.npz"]
    assert again(data)["listed"] == 0
    # Nowhere to write: a warning, and a listing at every start, never an error.
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    settle(data, when=1_700_000_100)
    for _ in range(2):
        seen = again(data)
        assert seen["listed"] == 2 * len(CLASSES) and same(seen, first)
        warnings = capsys.readouterr().err
        assert re.search(r"could not write the file index of \S+/train \(.*Not a directory",
                         warnings) and "listed again at the next start" in warnings


def test_datasets_hold_their_paths_as_shared_arrays_not_python_strings(tmp_path):
    data = write_tree(tmp_path)
    train = build_dataset("ImageFolder", "train", data, np.asarray, val_fraction=0.25)
    val = build_dataset("ImageFolder", "val", data, np.asarray, val_fraction=0.25)
    for dataset in (train, val):
        assert type(dataset.files) is FileList
        assert not [v for v in vars(dataset).values() if isinstance(v, list)]
        parts = vars(dataset.files)
        assert sorted(parts) == ["buffer", "ends", "prefix", "starts"]
        assert parts["buffer"].dtype == np.uint8 and parts["starts"].dtype == np.int64
        assert len(parts["starts"]) == len(parts["ends"]) == len(dataset)
    assert np.shares_memory(train.files.buffer, val.files.buffer)  # one copy of the names
    assert sorted([*train.files, *val.files]) == sorted(
        str(data / f) for f in fresh_listing(data)["files"])
    # A reader of one's own may return a list of paths: the dataset holds it as arrays too.
    paths = [str(data / "val" / "b" / "0.png"), str(data / "val" / "é" / "1.png")]
    own = ImageFileDataset(ImageSet(paths, np.array([0, 1]), ("b", "é")), np.asarray)
    assert type(own.files) is FileList and list(own.files) == paths
    assert own.files == paths and own.files[-1] == paths[-1] and own.files[1:] == paths[1:]


@pytest.mark.slow
@pytest.mark.parametrize("slow_listing", [False, True], ids=["", "longer-than-the-group-timeout"])
def test_rank_0_lists_and_the_other_rank_reads_its_index(tmp_path, slow_listing):
    """Slow: rank 0 lists for 25 s in a process group whose collectives time out after 10 s
    (NCCL's 10 minutes against a network file system): rank 1 waits for it regardless.
    (Mutation: barrier() meeting in the default group fails it with gloo's timeout.) 10 s,
    not less: the group's own start-up must not time out on a loaded machine."""
    data = write_tree(tmp_path)
    slow = ({"LIST_DATA_GROUP_TIMEOUT": "10", "LIST_DATA_RANK0_DELAY": "25"} if slow_listing
            else {})
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", "-m", "tests.list_data", "ImageFolder", "train", str(data), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **slow})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["rank"] for s in seen] == [0, 1]
    assert (seen[0]["listed"], seen[1]["listed"]) == (2 * len(CLASSES), 0)
    expected = [str(data / f) for f in fresh_listing(data)["files"]]
    assert seen[0]["files"] == seen[1]["files"] == expected
