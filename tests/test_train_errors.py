"""train.py on bad input: every case a clear one-paragraph error with exit code 2, never a
traceback, and never torch's advice to load files with weights_only=False."""

import fractions
import os

import pytest
import torch

import train
from tests.fakedata import write_image_folder

SMALL = ["--dataset", "Digits", "--model_version", "A", "--fc_width", "64", "--train_subset",
         "16", "--val_subset", "16", "--batch_size", "16", "--epochs", "1", "--workers", "0",
         "--device", "cpu", "--wandb", "disabled", "--progress", "false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint files that are not what the flags expect, in torch's real format."""
    root = tmp_path_factory.mktemp("files")
    contents = {"list": [1, 2], "tensor": torch.zeros(3), "model_str": {"model": "weights"},
                "model_list": {"model": [1.0, 2.0]},
                "pickled": {"model": {}, "note": fractions.Fraction(1, 3)}}
    for name, content in contents.items():
        torch.save(content, root / f"{name}.pt")
    (root / "a_file").write_text("not a directory")
    (root / "int_keys.yaml").write_text("1: 2\n")
    (root / "nested.yaml").write_text("lr: " + "[" * 5000 + "]" * 5000 + "\n")
    os.mkfifo(root / "fifo")
    return root


CASES = [
    (["--device", "cuda:x"], "--device"),
    (["--device", "tpu"], "--device"),
    (["--run_name", "../escaped"], "--run_name"),
    (["--run_name", "/tmp/absolute"], "--run_name"),
    (["--resume", "{files}/list.pt"], "does not hold a checkpoint dict"),
    (["--resume", "{files}/tensor.pt"], "does not hold a checkpoint dict"),
    (["--resume", "{files}/pickled.pt"], "not a readable checkpoint"),
    (["--init_from", "{files}/list.pt"], "does not hold a checkpoint dict"),
    (["--init_from", "{files}/model_str.pt"], "nor a state dict of tensors"),
    (["--init_from", "{files}/pickled.pt"], "not a readable checkpoint"),
    (["--init", "from_A", "--init_from_A", "{files}/tensor.pt"], "checkpoint dict"),
    (["--init", "from_A", "--init_from_A", "{files}/model_list.pt"], "no network weights"),
    (["--out_dir", "{files}/a_file"], "cannot create a run directory"),
    (["--out_dir", "{files}/a_file/below"], "cannot create a run directory"),
    (["--schedule", "step", "--step_epochs", "0"], "--step_epochs"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--weight_decay=-1e-4"], "--weight_decay"),
    (["--momentum", "1.0"], "--momentum"),
    (["--betas", "0.9,1.0"], "--betas"),
    (["--grad_clip", "0"], "--grad_clip"),
    (["--schedule", "cosine", "--min_lr", "0.1"], "--min_lr"),
    (["--init_std=-0.01"], "--init_std"),
    (["--image_size", "48"], "--image_size"),
    (["--image_size", "32", "--train_scale", "16,32"], "--train_scale"),
    (["--workers", "100000"], "--workers"),
    (["--val_fraction", "0.0001"], "validation set of Digits has no images"),
    # issue 24: tracebacks before
    (["--config", "{files}/int_keys.yaml"], "must be option names (text), got 1"),
    (["--config", "{files}/nested.yaml"], "nests its values too deeply"),
    (["--seed", str(2**64)], "--seed must be in [0, 2**32)"),
    (["--train_scale", "8,8"], "--train_scale 8,8 does not fit --image_size 32 (Digits "
                               "default)"),
    (["--width", "1e6"], "needs more memory than torch can address"),
    (["--fc_width", str(10**9)], "GiB, more than the"),
    (["--image_size", str(2**20)], "GiB, more than the"),
    # issue 24: unclear before
    (["--config", "{files}/fifo"], "is not a regular file (a FIFO"),
    (["--config", "/dev/zero"], "is not a regular file (a FIFO"),
    (["--val_fraction", "0.9999999"], "--val_fraction 0.9999999 holds out all of them"),
]


@pytest.mark.parametrize("extra, needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_a_clear_error(files, tmp_path, capsys, extra, needle):
    argv = [a.format(files=files) for a in extra]
    assert train.main([*SMALL, "--out_dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.startswith("train.py: error:")
    assert "weights_only=False" not in err and "file an issue" not in err.lower()
    assert list(tmp_path.iterdir()) == []  # no empty run directory left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path, capsys):
    assert train.main([*SMALL, "--out_dir", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_a_run_failing_before_writing_leaves_no_directory_but_keeps_a_users(tmp_path, capsys):
    missing = ["--dataset", "ImageFolder", "--data_root", str(tmp_path / "nowhere")]
    runs = tmp_path / "runs"
    assert train.main([*SMALL, *missing, "--out_dir", str(runs), "--run_name", "r"]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert not (runs / "r").exists()
    # A directory that was there before the run is the user's: kept, empty or not.
    for name, contents in [("empty", {}), ("notes", {"notes.txt": "mine"})]:
        (runs / name).mkdir(parents=True)
        for file, text in contents.items():
            (runs / name / file).write_text(text)
        assert train.main([*SMALL, *missing, "--out_dir", str(runs), "--run_name", name]) == 2
        assert {p.name: p.read_text() for p in (runs / name).iterdir()} == contents


def test_a_failed_resume_leaves_the_run_directory_as_it_was(tmp_path, capsys):
    """The photos moved away after training: resuming fails, the run keeps every file."""
    photos, run_dir = tmp_path / "photos", tmp_path / "runs" / "r"
    write_image_folder(photos, ["a", "b"], per_class=8, size=(32, 32), extension=".jpg")
    assert train.main([*SMALL, "--dataset", "ImageFolder", "--data_root", str(photos),
                       "--image_size", "32", "--train_subset", "8", "--val_subset", "8",
                       "--batch_size", "8", "--out_dir", str(run_dir.parent),
                       "--run_name", run_dir.name]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert "last.pt" in before
    photos.rename(tmp_path / "moved")
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--epochs", "2"]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
