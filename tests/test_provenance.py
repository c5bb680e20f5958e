"""Provenance (vgg/provenance.py): the git state of a repository made here, the dataset
fingerprint of real folders, and the records a training run's checkpoint, an evaluation's
results JSON and an export carry, read back from the files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tomllib
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import Dataset, Subset

import dataset_class
import train
from tests.evalnets import save_tiny_checkpoint
from tests.fakedata import write_image_folder
from tests.test_train_cli import ROOT, tiny
from vgg.checkpoint import CheckpointError, load_checkpoint
from vgg.data import ImageFileDataset
from vgg.data.file_list import FileList
from vgg.data.imageset import ImageSet
from vgg.provenance import dataset_change, dataset_fingerprint, git_state, split_fingerprint

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def checkout_state() -> dict | None:
    """This checkout's commit and whether a tracked file differs, asked of git directly;
    None where the tests do not run from a checkout."""
    try:
        commit = git(ROOT, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": git(ROOT, "status", "--porcelain",
                                            "--untracked-files=no") != ""}


@needs_git
def test_git_state_of_a_repository_follows_its_commits_and_edits(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    git(repo, "add", "pkg")
    assert git_state(repo / "pkg" / "code.py") is None  # no commit yet
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    assert git_state(repo / "pkg" / "code.py") == {"commit": git(repo, "rev-parse", "HEAD"),
                                           "dirty": False}
    (repo / "pkg" / "code.py").write_text("x = 2\n")  # a tracked file changed: dirty
    assert git_state(repo / "pkg" / "code.py") == {"commit": git(repo, "rev-parse", "HEAD"),
                                           "dirty": True}
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "two")
    second = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "pkg" / "code.py") == {"commit": second, "dirty": False}
    assert git_state(repo / "pkg") == git_state(repo / "pkg" / "code.py")  # a package folder
    (repo / "notes.txt").write_text("untracked files do not make it dirty\n")
    assert git_state(repo / "pkg" / "code.py")["dirty"] is False
    # a file git does not track (an installed copy inside someone's repository), or no
    # repository at all: no git state
    assert git_state(repo / "notes.txt") is None
    (tmp_path / "alone.py").write_text("")
    assert git_state(tmp_path / "alone.py") is None


def folder_fingerprint(root):
    spec = dataset_class.dataset_spec("ImageFolder", root)
    transform = dataset_class.eval_transform(spec, 32)
    return dataset_fingerprint("ImageFolder", {
        split: dataset_class.build_dataset("ImageFolder", split, root, transform)
        for split in ("train", "test")}, root)


def test_dataset_fingerprint_counts_and_hashes_the_file_index(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, ["cat", "dog"], per_class=5)
    first = folder_fingerprint(root)
    # train/ alone: a seeded 10% held out, so the train split has 9 of the 10 images
    assert first["name"] == "ImageFolder" and first["classes"] == 2
    assert first["splits"]["train"]["images"] == 9 and first["splits"]["test"]["images"] == 10
    assert all(len(s["sha256"]) == 64 for s in first["splits"].values())
    # the same images under another data root: the same fingerprint (paths are relative)
    shutil.copytree(root, tmp_path / "moved")
    assert folder_fingerprint(tmp_path / "moved") == first
    # one test image renamed: the counts are the same, the test index hash is not
    (root / "test" / "dog" / "3.png").rename(root / "test" / "dog" / "3b.png")
    renamed = folder_fingerprint(root)
    assert renamed["splits"]["test"]["images"] == 10
    assert renamed["splits"]["test"]["sha256"] != first["splits"]["test"]["sha256"]
    assert renamed["splits"]["train"] == first["splits"]["train"]
    # one test image moved to the other class: relabelled, another hash
    (root / "test" / "dog" / "3b.png").rename(root / "test" / "cat" / "3b.png")
    assert folder_fingerprint(root)["splits"]["test"]["sha256"] != \
        renamed["splits"]["test"]["sha256"]


class PathsAndLabels(Dataset):
    """A user's own dataset of image paths as a plain list (not the readers' FileList)."""

    def __init__(self, files: list[str], labels: list[int], classes: tuple[str, ...]):
        self.files, self.labels, self.classes = files, labels, classes

    def __len__(self) -> int:
        return len(self.files)


def test_the_file_index_hash_is_of_the_sorted_relative_paths_and_labels(tmp_path):
    """The digest, against hashlib over the index written out by hand: the same for the
    readers' FileList and a plain list of the same paths, in any order, for a subset too.
    Class by class (the listing's order) is not the sorted order where a class name is
    another's prefix: "n1-/" sorts before "n1/"."""
    root = tmp_path / "data"
    names = ["n1/x.JPEG", "n1/y.JPEG", "n1-/z.JPEG", os.fsdecode(b"n1-/\xff.JPEG")]
    labels, classes = [0, 0, 1, 1], ("n1", "n1-")
    files = ImageSet(FileList.of(names, root / "train"), np.array(labels), classes)
    ours = ImageFileDataset(files, lambda image: image)
    plain = PathsAndLabels([str(root / "train" / name) for name in names[::-1]], labels[::-1],
                           classes)

    def sha256(*entries: bytes) -> str:
        return hashlib.sha256(b"n1\tn1-\n" + b"\n".join(entries)).hexdigest()

    whole = sha256(b"train/n1-/z.JPEG\t1", b"train/n1-/\xff.JPEG\t1", b"train/n1/x.JPEG\t0",
                   b"train/n1/y.JPEG\t0")
    assert split_fingerprint(ours, root) == {"images": 4, "sha256": whole}
    assert split_fingerprint(plain, root) == {"images": 4, "sha256": whole}
    part = {"images": 2, "sha256": sha256(b"train/n1-/z.JPEG\t1", b"train/n1/x.JPEG\t0")}
    assert split_fingerprint(Subset(ours, [2, 0]), root) == part
    assert split_fingerprint(Subset(Subset(plain, [3, 2, 1]), [2, 0]), root) == part


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short real run of train.py: its run directory."""
    run_dir = tmp_path_factory.mktemp("prov") / "run"
    assert train.main(tiny(run_dir, "--epochs", "1")) == 0
    return run_dir


def assert_environment(record: dict, device: str = "cpu") -> None:
    """The fields that describe this process, against their sources read here."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert record["toolkit"] == pyproject["project"]["version"]
    assert record["git"] == checkout_state()
    assert (record["torch"], record["torchvision"]) == (torch.__version__,
                                                        torchvision.__version__)
    assert record["cuda"] == torch.version.cuda
    assert record["device"].startswith(device)


def test_a_run_checkpoint_records_code_libraries_device_and_data(trained):
    record = load_checkpoint(trained / "last.pt")["provenance"]
    assert_environment(record)
    data = record["dataset"]
    assert (data["name"], data["classes"]) == ("Digits", 10)
    # --train_subset 96 and --val_subset 32: the images the run read
    assert data["splits"]["train"]["images"] == 96 and data["splits"]["val"]["images"] == 32
    assert data["splits"]["train"]["sha256"] != data["splits"]["val"]["sha256"]


def test_an_evaluation_records_its_own_and_the_networks_provenance(trained, tmp_path,
                                                                    capsys):
    import evaluate

    out = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(trained / "last.pt"), "--limit", "5",
                          "--workers", "0", "--out", str(out), "--progress", "false"]) == 0
    results = json.loads(out.read_text())
    assert_environment(results["provenance"])
    data = results["provenance"]["dataset"]
    assert data["name"] == "Digits" and data["splits"] == {
        "test": {"images": 5, "sha256": data["splits"]["test"]["sha256"]}}
    checkpoint = load_checkpoint(trained / "last.pt")
    assert results["networks"][0]["provenance"] == checkpoint["provenance"]
    printed = capsys.readouterr().out
    assert "provenance: vgg-reproduced " in printed and "trained by: " in printed
    assert "Digits (10 classes): test 5 images" in printed


def test_an_export_records_its_own_and_the_checkpoints_provenance(trained, tmp_path):
    from vgg.export import export

    export(str(trained / "last.pt"), tmp_path)
    checkpoint = load_checkpoint(trained / "last.pt")
    state = torch.load(tmp_path / "last_weights.pth", weights_only=True)
    record = state._metadata[""]["vgg_provenance"]
    assert_environment(record)
    assert record["dataset"] is None and record["checkpoint"] == checkpoint["provenance"]
    with zipfile.ZipFile(tmp_path / "last.pt2") as program:
        name = next(n for n in program.namelist() if n.endswith("vgg_provenance.json"))
        assert json.loads(program.read(name)) == record
    if (tmp_path / "last.onnx").exists():  # with the onnx packages installed
        import onnx

        props = {e.key: e.value for e in onnx.load(tmp_path / "last.onnx").metadata_props}
        assert json.loads(props["vgg_provenance"]) == record


def test_checkpoints_without_provenance_load_and_a_crafted_one_is_refused(tmp_path):
    save_tiny_checkpoint(tmp_path / "old.pt")
    assert "provenance" not in load_checkpoint(tmp_path / "old.pt")  # older checkpoints
    good = load_checkpoint(tmp_path / "old.pt") | {"provenance": {
        "toolkit": "0.3.0", "git": {"commit": "a" * 40, "dirty": False}, "python": "3.11.7",
        "torch": "2.14.1", "torchvision": "0.29.1", "cuda": None, "cudnn": None,
        "device": "cpu (x86_64)", "dataset": {"name": "Digits", "classes": 10, "splits": {
            "train": {"images": 96, "sha256": "0" * 64}}}}}
    torch.save(good, tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt")["provenance"] == good["provenance"]
    for change, needle in (({"git": {"commit": "HEAD", "dirty": False}}, "git"),
                           ({"torch": ["2.14.1"]}, "torch"),
                           ({"device": "x" * 1000}, "device"),
                           ({"dataset": {"name": "Digits", "classes": 10, "splits": {
                               "train": {"images": "96"}}}}, "dataset")):
        crafted = good | {"provenance": good["provenance"] | change}
        torch.save(crafted, tmp_path / "crafted.pt")
        with pytest.raises(CheckpointError, match=f"provenance {needle}"):
            load_checkpoint(tmp_path / "crafted.pt")


def test_dataset_change_compares_each_split_by_count_then_by_index():
    def record(**splits):
        return {"dataset": {"name": "ImageFolder", "classes": 2, "splits": splits}}

    same = record(train={"images": 14, "sha256": "a"}, val={"images": 2, "sha256": "b"})
    assert dataset_change(same, same) is None
    assert dataset_change(same, record(train={"images": 15, "sha256": "c"},
                                       val={"images": 2, "sha256": "b"})) == \
        "train 14 images then, 15 now"
    assert dataset_change(same, record(train={"images": 14, "sha256": "a"},
                                       val={"images": 2, "sha256": "d"})) == \
        "val 2 images, other files or labels"
    counted_only = record(train={"images": 14}, val={"images": 2})
    assert dataset_change(counted_only, same) is None  # nothing to compare but counts
    assert dataset_change({"dataset": None}, same) is None  # a checkpoint without one
    assert dataset_change(None, same) is None


def test_resuming_on_changed_data_warns_that_it_is_no_longer_exact(tmp_path, capsys):
    """Silent while the images are as they were; an image added, then one moved to another
    class, each named in a warning, and the run goes on. (Mutation: comparing the
    fingerprints of the checkpoint with themselves fails it.)"""
    photos, run_dir = tmp_path / "photos", tmp_path / "run"
    write_image_folder(photos, ["cat", "dog"], per_class=8, splits=("train",))
    assert train.main(tiny(run_dir, "--dataset", "ImageFolder", "--data_root", str(photos),
                           "--image_size", "32", "--train_subset", "none", "--val_subset",
                           "none", "--max_steps", "1")) == 0

    def resume(steps: int) -> tuple[str, dict]:
        capsys.readouterr()
        before = load_checkpoint(run_dir / "last.pt")["provenance"]["dataset"]["splits"]
        assert train.main(["--resume", str(run_dir), "--max_steps", str(steps)]) == 0
        return capsys.readouterr().out, before

    out, _ = resume(2)
    assert "warning: --resume" not in out
    shutil.copy(photos / "train" / "cat" / "0.png", photos / "train" / "cat" / "new.png")
    out, before = resume(3)
    now = load_checkpoint(run_dir / "last.pt")["provenance"]["dataset"]["splits"]
    assert now["train"]["images"] + now["val"]["images"] == 17
    changed = [f"{split} {before[split]['images']} images then, {now[split]['images']} now"
               for split in ("train", "val") if before[split]["images"] != now[split]["images"]]
    # (and the held-out val split, drawn over 17 images now, may hold other files)
    assert changed and f"warning: --resume: the data is not what this run trained on so far " \
                       f"({'; '.join(changed)}" in out
    (photos / "train" / "cat" / "new.png").rename(photos / "train" / "dog" / "new.png")
    out, _ = resume(4)
    assert "other files or labels" in out and "no longer an exact continuation" in out
