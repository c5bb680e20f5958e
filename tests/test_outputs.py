"""Issue 24: what evaluate.py, predict.py and python -m vgg.export write. Nothing a user
keeps is replaced (a checkpoint, a run's own files, any file that is not an earlier result
of the same command); a place that cannot take the output is refused before the work; a
full disk is one clear message, with the previous file kept."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import evaluate
import predict
from tests.evalnets import save_tiny_checkpoint
from vgg import export
from vgg.atomic import WriteError, replace_atomically
from vgg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

RUN_FILES = {"best.pt": None, "last.pt": None, "config.yaml": b"dataset: Digits\n",
             "metrics.jsonl": b'{"epoch": 1, "val_top1_error": 0.5}\n',
             "metrics.csv": b"epoch,val_top1_error\n1,0.5\n", "notes.json": b'{"mine": 1}\n',
             "photo_list.csv": b"file\ncat.jpg\n"}


@pytest.fixture()
def run(tmp_path) -> Path:
    """A run directory as train.py leaves it, with a user's own files beside it."""
    folder = tmp_path / "runs" / "digits"
    folder.mkdir(parents=True)
    save_tiny_checkpoint(folder / "best.pt", preprocessing={
        "dataset": "Digits", "classes": [str(i) for i in range(10)], "in_channels": 1,
        "image_size": 32, "mean": [0.3], "std": [0.4], "train_scale": [32, 48],
        "resize": "bilinear"})
    shutil.copyfile(folder / "best.pt", folder / "last.pt")
    for name, content in RUN_FILES.items():
        if content is not None:
            (folder / name).write_bytes(content)
    return folder


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    return path


def run_evaluate(run: Path, out) -> int:
    return evaluate.main(["--checkpoint", str(run / "best.pt"), "--limit", "3", "--workers", "0",
                          "--progress", "false", "--scale", "32", "--out", str(out)])


def run_predict(run: Path, photo: Path, out) -> int:
    return predict.main([str(photo), "--checkpoint", str(run / "best.pt"), "--out", str(out)])


@pytest.mark.parametrize("name", RUN_FILES)
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_out_never_replaces_a_file_it_did_not_write(run, photo, name, command, capsys):
    """Issue 24, item 1: --out RUN/best.pt left 2 KB of JSON where the weights were."""
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code = (run_evaluate(run, run / name) if command == "evaluate"
            else run_predict(run, photo, run / name))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert ("never replaces" in err or "is not an earlier" in err
            or "name a .csv or .json" in err), err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_predict_replaces_its_own_earlier_output(run, photo, tmp_path, suffix):
    out = tmp_path / f"predictions{suffix}"
    assert run_predict(run, photo, out) == 0
    first = out.read_bytes()
    assert run_predict(run, photo, out) == 0 and out.read_bytes() == first


def test_evaluate_replaces_its_own_earlier_results_and_cleans_killed_temporaries(run, tmp_path):
    out = tmp_path / "results" / "r.json"
    assert run_evaluate(run, out) == 0
    # A kill during the picture's write left its temporary (0 bytes), named after a process
    # that is gone; a live process's (another evaluation writing now) is left alone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "600"])
    stale = out.parent / f".r_confusion.png.{dead.pid}.tmp"
    live = out.parent / f".r_confusion.png.{alive.pid}.tmp"
    stale.touch()
    live.touch()
    try:
        assert run_evaluate(run, out) == 0
    finally:
        alive.kill()
        alive.wait()
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["r.json", "r_confusion.csv", "r_confusion.png", live.name])


@pytest.mark.parametrize("where, phrase", [
    (lambda tmp: tmp, "is a folder"),
    (lambda tmp: Path("/proc/predictions.csv"), "cannot write in /proc"),
    (lambda tmp: tmp / "photo.png" / "predictions.csv", "is a file, not a folder"),
], ids=["a-folder", "under-proc", "under-a-file"])
def test_predict_out_that_cannot_be_written_is_refused_before_the_work(run, photo, tmp_path,
                                                                       capsys, where, phrase):
    assert run_predict(run, photo, where(tmp_path)) == 2
    captured = capsys.readouterr()
    assert phrase in captured.err and "Traceback" not in captured.err
    assert "photo.png:" not in captured.out  # nothing was predicted


def test_predict_unknown_device_is_refused_before_the_work(run, photo, capsys):
    assert predict.main([str(photo), "--checkpoint", str(run / "best.pt"), "--device",
                         "tpu"]) == 2
    captured = capsys.readouterr()
    assert "--device tpu: choose auto, cpu, cuda or cuda:N" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("where, phrase", [
    (lambda tmp: tmp / "photo.png", "is a file, not a folder"),
    (lambda tmp: Path("/proc/export"), "cannot write in /proc"),
], ids=["an-existing-file", "under-proc"])
def test_export_out_that_cannot_be_written_is_refused(run, photo, tmp_path, capsys, where,
                                                      phrase):
    before = photo.read_bytes()
    assert export.main([str(run), "--out", str(where(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and photo.read_bytes() == before


# ---------------------------------------------------------------------------- full disk


@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MiB tmpfs: a real file system that runs out of space (root only; skipped
    where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_checkpoint_write_on_a_full_disk_is_one_clear_error(full_disk):
    """torch's zip writer raises RuntimeError ("unexpected pos"), not OSError, when the
    disk fills: the previous checkpoint is kept and the message says why."""
    path = full_disk / "last.pt"
    save_checkpoint({"step": 1}, path)
    with pytest.raises(CheckpointError, match="no space left on the device") as info:
        save_checkpoint({"step": 2, "w": torch.ones(1_000_000)}, path)  # 4 MB
    assert "previous checkpoints" in str(info.value)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in full_disk.iterdir()] == ["last.pt"]


def test_outputs_on_a_full_disk_are_refused_before_the_work(run, photo, full_disk, capsys):
    filler = full_disk / "filler"
    with pytest.raises(OSError), open(filler, "wb") as f:
        f.write(b"\0" * 2**21)  # fills the 1 MiB disk
    for command in (lambda: run_evaluate(run, full_disk / "r.json"),
                    lambda: run_predict(run, photo, full_disk / "p.csv"),
                    lambda: export.main([str(run), "--out", str(full_disk / "export")])):
        code = command()
        captured = capsys.readouterr()
        assert code == 2 and "MiB free" in captured.err, captured.err
        assert "Traceback" not in captured.err and "top-1" not in captured.out
    assert sorted(p.name for p in full_disk.iterdir()) == ["export", "filler"]


def test_a_write_that_fails_is_one_clear_error_and_replaces_nothing(tmp_path):
    """The write seam every output goes through, on a device that is always full
    (/dev/full: each write fails with ENOSPC)."""
    path = tmp_path / "r.json"
    path.write_text("old")
    os.symlink("/dev/full", tmp_path / f".r.json.{os.getpid()}.tmp")
    with pytest.raises(WriteError, match="could not write .*r.json: no space left") as info:
        with replace_atomically(path) as f:
            f.write("x" * 2**16)
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_predict_lists_empty_and_huge_images_as_unreadable(run, photo, tmp_path, capsys):
    """Issue 24: a zero-byte image and one above the pixel limit crashed predict.py (and
    took 6 GB); they are listed as unreadable, and the readable one is predicted."""
    (tmp_path / "empty.png").touch()
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((30000, 30000), np.uint8))
    out = tmp_path / "p.csv"
    assert predict.main([str(tmp_path), "--checkpoint", str(run / "best.pt"), "--out",
                         str(out), "--progress", "false"]) == 0
    captured = capsys.readouterr()
    assert "could not read 2 file(s)" in captured.err and "Traceback" not in captured.err
    rows = {row.split(",")[0]: row.rsplit(",", 1)[1] for row in out.read_text().splitlines()}
    assert rows[str(tmp_path / "empty.png")] == rows[str(tmp_path / "huge.png")] == "unreadable"
    assert rows[str(photo)] == ""
