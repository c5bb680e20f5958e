"""train.py end to end through its command line: runs interrupted, resumed, killed and
failing, against uninterrupted runs and the files they write."""

import fcntl
import importlib.util
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from tests.test_pretrained import cached_file_name, offline_torch_cache
from vgg import run_dir as run_dir_module
from vgg.checkpoint import load_checkpoint
from vgg.run_log import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data"


def tiny(run_dir: Path, *extra: str) -> list[str]:
    """A few-second run: VGG-A, FC width 64, 96 digits, 2 epochs of 6 steps (2 x 8 each)."""
    return ["--dataset", "Digits", "--model_version", "A", "--fc_width", "64",
            "--train_subset", "96", "--val_subset", "32", "--batch_size", "16",
            "--micro_batch_size", "8", "--epochs", "2", "--lr", "0.01", "--workers", "0",
            "--device", "cpu", "--deterministic", "true", "--wandb", "disabled",
            "--progress", "false", "--log_interval", "1", "--out_dir", str(run_dir.parent),
            "--run_name", run_dir.name, *extra]



def cli(*argv: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)



def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key



def rows(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r["kind"] == kind]


def killed_after_logging(run_dir: Path, *logger: str) -> None:
    """A tiny run logging also to ``logger``, killed after steps 4 and 5 were logged but
    before their checkpoint, then resumed from step 3's checkpoint to its end (12 steps):
    the resumed run logs steps 4 and 5 again."""
    assert train.main(tiny(run_dir, *logger, "--max_steps", "3")) == 0
    at_step_3 = (run_dir / "last.pt").read_bytes()
    assert train.main(["--resume", str(run_dir), "--max_steps", "5"]) == 0
    (run_dir / "last.pt").write_bytes(at_step_3)  # killed before step 5's checkpoint
    assert train.main(["--resume", str(run_dir), "--max_steps", "none"]) == 0



# With --ema (and BatchNorm, whose statistics it averages) the average resumes exactly too.
@pytest.mark.parametrize("extra", [(), ("--batch_norm", "true", "--ema", "0.9")],
                         ids=["raw", "ema"])
def test_resume_after_a_step_is_bit_identical(tmp_path, extra):
    assert train.main(tiny(tmp_path / "full", *extra)) == 0
    assert train.main(tiny(tmp_path / "cut", "--max_steps", "5", *extra)) == 0
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["step"], cut["epoch"], cut["position"]) == (5, 0, 80)
    assert train.main(["--resume", str(tmp_path / "cut"), "--max_steps", "none"]) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["step"] == full["step"] == 12
    assert_same_state(full["model"], resumed["model"])
    if extra:
        assert resumed["ema_updates"] == full["ema_updates"] == 12
        assert_same_state(full["model_ema"], resumed["model_ema"])
        # the average is not the weights, and its BatchNorm statistics are its own
        assert not torch.equal(full["model_ema"]["features.1.running_mean"],
                               full["model"]["features.1.running_mean"])
        assert [r["val_ema_loss"] for r in rows(tmp_path / "full", "epoch")] == \
            [r["val_ema_loss"] for r in rows(tmp_path / "cut", "epoch")]
        assert {r["best_by"] for r in rows(tmp_path / "cut", "epoch")} == {"ema"}
        # and the weights trained are those of a run without the average
        assert train.main(tiny(tmp_path / "plain", "--batch_norm", "true")) == 0
        assert_same_state(load_checkpoint(tmp_path / "plain" / "last.pt")["model"],
                          full["model"])
    assert_same_state(full["optimizer"]["state"][0], resumed["optimizer"]["state"][0])
    # The metrics log has no duplicated rows and ends like the uninterrupted one.
    steps = [r["step"] for r in rows(tmp_path / "cut", "train")]
    assert steps == list(range(1, 13))
    for a, b in zip(rows(tmp_path / "full", "epoch"), rows(tmp_path / "cut", "epoch"),
                    strict=True):
        assert (a["loss"], a["val_loss"], a["val_n"]) == (b["loss"], b["val_loss"], b["val_n"])
    assert rows(tmp_path / "full", "epoch")[-1]["val_n"] == 32
    # curves.png, redrawn from the metrics file at every epoch end
    curves = np.asarray(Image.open(tmp_path / "full" / "curves.png").convert("L"))
    assert curves.shape[0] > 100 and curves.min() < 128 < curves.max()



def test_flags_given_with_resume_override_the_saved_hyperparameters(tmp_path):
    # "Resume with a lower --lr" is the advice after a divergence: it must take effect.
    assert train.main(tiny(tmp_path / "run", "--max_steps", "5")) == 0
    assert train.main(["--resume", str(tmp_path / "run"), "--max_steps", "7", "--lr", "0.001",
                       "--weight_decay", "0.0001"]) == 0
    resumed = load_checkpoint(tmp_path / "run" / "last.pt")
    assert resumed["config"]["lr"] == 0.001
    assert {g["lr"] for g in resumed["optimizer"]["param_groups"]} == {0.001}
    assert {g["weight_decay"] for g in resumed["optimizer"]["param_groups"]} == {0.0001}
    assert [r["lr"] for r in rows(tmp_path / "run", "train")][4:] == [0.01, 0.001, 0.001]



@pytest.mark.slow
def test_sigterm_saves_and_resume_is_bit_identical(tmp_path):
    assert train.main(tiny(tmp_path / "full")) == 0
    cut = tmp_path / "cut"
    process = subprocess.Popen(
        [sys.executable, "train.py", *tiny(cut)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WANDB_MODE": "disabled"})
    deadline = time.time() + 120
    while not ((cut / "metrics.jsonl").exists() and (cut / "metrics.jsonl").read_text()):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in out and "--resume" in out and "Traceback" not in err
    stopped = load_checkpoint(cut / "last.pt")
    assert 0 < stopped["step"] < 12
    resumed = cli("--resume", str(cut), "--max_steps", "none")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(load_checkpoint(tmp_path / "full" / "last.pt")["model"],
                      load_checkpoint(cut / "last.pt")["model"])



@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_last_stays_readable(tmp_path):
    run_dir = tmp_path / "kill"
    # FC width 1024: each checkpoint is ~90 MB, so the write takes a while.
    args = tiny(run_dir, "--fc_width", "1024", "--checkpoint_interval", "1", "--epochs", "5")
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "WANDB_MODE": "disabled"})
    deadline = time.time() + 120
    try:
        # Wait for a complete last.pt, then for the next write in progress, then kill -9.
        while not (run_dir / "last.pt").exists():
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.005)
        while not list(run_dir.glob(".last.pt.*.tmp")):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.0005)
        process.kill()
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["step"] >= 1
    resumed = cli("--resume", str(run_dir), "--epochs", "1", "--max_steps", "none")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run_dir.glob(".*.tmp"))



def test_missing_imagenet_says_what_to_do(tmp_path):
    run = cli("--model_version", "D", "--data_root", str(tmp_path / "data"),
              "--out_dir", str(tmp_path), "--device", "cpu")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert str(tmp_path / "data") in run.stderr and "ImageNet" in run.stderr



def test_default_command_without_imagenet(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model_version", "D"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "ImageNet" in run.stderr and "data" in run.stderr



def test_truncated_and_mismatched_checkpoints(tmp_path, capsys):
    assert train.main(tiny(tmp_path / "a", "--epochs", "1", "--train_subset", "16")) == 0
    capsys.readouterr()
    last = tmp_path / "a" / "last.pt"
    # Another network: D weights from an A checkpoint, or resuming A as D.
    assert train.main(tiny(tmp_path / "d", "--model_version", "D", "--init_from",
                           str(last))) == 2
    assert "--model_version A" in capsys.readouterr().err  # how to build the one it holds
    assert train.main(["--resume", str(tmp_path / "a"), "--model_version", "B"]) == 2
    assert "holds another network" in capsys.readouterr().err
    # A truncated file.
    data = last.read_bytes()
    (tmp_path / "a" / "cut.pt").write_bytes(data[: len(data) // 2])
    assert train.main(["--resume", str(tmp_path / "a" / "cut.pt")]) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err and "Traceback" not in err
    assert train.main(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err



def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    args = tiny(tmp_path / "r", "--epochs", "1", "--train_subset", "16")
    assert train.main(args) == 0
    assert train.main(args) == 2
    assert "--resume" in capsys.readouterr().err



def test_non_finite_loss_stops_naming_the_checkpoint_or_skips(tmp_path, capsys):
    args = tiny(tmp_path / "nan", "--lr", "1e30", "--checkpoint_interval", "1")
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and str(tmp_path / "nan" / "last.pt") in err
    assert train.main(tiny(tmp_path / "skip", "--lr", "1e30", "--on_nonfinite", "skip")) == 0
    epochs = rows(tmp_path / "skip", "epoch")
    assert epochs[-1]["nonfinite_steps"] > 0



def test_csv_metrics_and_best_checkpoint(tmp_path):
    assert train.main(tiny(tmp_path / "c", "--metrics_format", "csv", "--keep_last_k",
                           "1")) == 0
    table = MetricsLog.read(tmp_path / "c" / "metrics.csv")
    assert [r["kind"] for r in table].count("epoch") == 2
    assert (tmp_path / "c" / "best.pt").exists() and (tmp_path / "c" / "epoch_002.pt").exists()
    assert not (tmp_path / "c" / "epoch_001.pt").exists()
    best = load_checkpoint(tmp_path / "c" / "best.pt")
    assert best["model_args"]["version"] == "A" and best["config"]["dataset"] == "Digits"
    assert best["best_top1"] == max(1 - float(r["val_top1_err"]) for r in table
                                    if r["kind"] == "epoch")



def test_killed_between_best_and_last_no_checkpoint_claims_a_missing_best(tmp_path,
                                                                         monkeypatch):
    run_dir = tmp_path / "b"
    args = tiny(run_dir, "--checkpoint_interval", "3")
    real_link = run_dir_module.link_atomically

    class Killed(BaseException):
        """The process dies: nothing of train.py runs after it."""

    def killed(source, target):  # the process dies after the epoch's first checkpoint write
        raise Killed

    monkeypatch.setattr(run_dir_module, "link_atomically", killed)
    with pytest.raises(Killed):
        train.main(args)
    last, best = (load_checkpoint(run_dir / name) for name in ("last.pt", "best.pt"))
    assert (last["epoch"], last["step"], last["best_top1"]) == (0, 6, -1.0)  # mid-epoch save
    assert (best["epoch"], best["step"]) == (1, 6) and best["best_top1"] > 0
    monkeypatch.setattr(run_dir_module, "link_atomically", real_link)
    assert train.main(["--resume", str(run_dir)]) == 0  # validates epoch 1 again
    assert [r["epoch"] for r in rows(run_dir, "epoch")] == [1, 2]
    final, best = (load_checkpoint(run_dir / name) for name in ("last.pt", "best.pt"))
    assert final["step"] == 12 and final["best_top1"] == best["best_top1"]
    # Killed there in a run's first epoch, best.pt is the only checkpoint: --resume finds it.
    first = tmp_path / "first"
    monkeypatch.setattr(run_dir_module, "link_atomically", killed)
    with pytest.raises(Killed):
        train.main(tiny(first))
    assert not (first / "last.pt").exists()
    assert train.main(tiny(first)) == 2  # not silently started over in the same directory
    monkeypatch.setattr(run_dir_module, "link_atomically", real_link)
    assert train.main(["--resume", str(first)]) == 0
    assert load_checkpoint(first / "last.pt")["step"] == 12



# W&B is optional (the GPU machines' stack has none): its tests skip where it is missing.
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb is not installed")


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline run's .wandb file (LevelDB-style log of protobuf
    records: 7-byte header, 32 KiB blocks, each record crc32, length, type, payload)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, pos, pending, history = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
    return history



@needs_wandb
def test_wandb_offline_records_the_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "w"
    assert train.main(tiny(run_dir, "--wandb", "offline", "--epochs", "1")) == 0
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history = wandb_history(files[0])
    epoch = rows(run_dir, "epoch")[-1]
    assert history[-1]["val/top1_err"] == pytest.approx(epoch["val_top1_err"])
    logged = [h["train/loss"] for h in history if "train/loss" in h]
    assert logged == pytest.approx([r["loss"] for r in rows(run_dir, "train")])
    run_id = load_checkpoint(run_dir / "last.pt")["wandb_run_id"]
    assert run_id and files[0].name == f"run-{run_id}.wandb"



@pytest.mark.slow
def test_quickstart_reaches_its_stated_accuracy(tmp_path):
    run = cli("--config", "configs/quickstart_digits.yaml", "--out_dir", str(tmp_path),
              "--progress", "false", timeout=1200)  # 10x idle
    assert run.returncode == 0, run.stderr
    best = min(r["val_top1_err"] for r in rows(tmp_path / "quickstart_digits", "epoch"))
    assert best <= 0.05



@pytest.mark.slow
def test_real_mnist_preset_reaches_99_percent_in_two_epochs(tmp_path):
    if not (MNIST / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {MNIST}/MNIST/raw (see shared/data/README.md)")
    # The MNIST preset's schedule squeezed into two epochs of the 54,000 training images
    # (warm-up, then cosine): about 75 s on 2 cores. Its full 18 epochs (README) reach 99.5%.
    run = cli("--config", "configs/mnist.yaml", "--data_root", str(MNIST), "--val_subset",
              "1000", "--epochs", "2", "--out_dir", str(tmp_path), "--run_name", "m",
              "--progress", "false", timeout=900)  # a hang guard: 10x the idle time
    assert run.returncode == 0, run.stderr
    import dataset_class
    from vgg.checkpoint import model_from_checkpoint
    from vgg.engine import validate
    model = model_from_checkpoint(load_checkpoint(tmp_path / "m" / "best.pt"))
    spec = dataset_class.dataset_spec("Mnist")
    test = dataset_class.build_dataset("Mnist", "test", MNIST,
                                       dataset_class.eval_transform(spec, 32))
    loader = torch.utils.data.DataLoader(test, 500)
    result = validate(model, loader, torch.device("cpu"))
    assert result["n"] == 10_000
    assert 1 - result["top1_err"] >= 0.99


def test_width_trains_a_narrow_network_that_its_checkpoint_rebuilds(tmp_path, capsys):
    from vgg.checkpoint import model_from_checkpoint
    run_dir = tmp_path / "narrow"
    assert train.main(tiny(run_dir, "--width", "0.25", "--max_steps", "1")) == 0
    assert "VGG-A at 0.25x width on Digits" in capsys.readouterr().out
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["model_args"]["width"] == 0.25
    assert model_from_checkpoint(checkpoint).features[0].out_channels == 16  # 64 x 0.25


@pytest.mark.parametrize("classes, shown", [(["a", "b", "c", "d", "e"], False),
                                             (["a", "b", "c", "d", "e", "f"], True)])
def test_top5_is_shown_and_logged_only_above_five_classes(tmp_path, capsys, classes, shown):
    from tests.fakedata import write_image_folder
    write_image_folder(tmp_path / "photos", classes, per_class=4, splits=("train", "val"))
    run_dir = tmp_path / "run"
    argv = tiny(run_dir, "--dataset", "ImageFolder", "--data_root", str(tmp_path / "photos"),
                "--image_size", "32", "--train_subset", "none", "--val_subset", "none",
                "--epochs", "1")
    assert train.main(argv) == 0
    epoch_line = next(line for line in capsys.readouterr().out.splitlines()
                      if line.startswith("epoch 1/1"))
    assert ("top-5" in epoch_line) == shown  # 5 classes or fewer: top-5 is always 0%
    logged = [row for row in MetricsLog.read(run_dir / "metrics.jsonl")]
    assert all(("top5_err" in row) == shown for row in logged)
    assert ("val_top5_err" in logged[-1]) == shown


def test_resume_in_a_config_file_works_like_the_flag(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train.main(tiny(run_dir, "--train_subset", "32", "--max_steps", "1")) == 0
    assert "2 steps/epoch x 2 epochs = 4 iterations" in capsys.readouterr().out
    config = tmp_path / "continue.yaml"
    config.write_text(f"resume: {run_dir}\nmax_steps: null\n")
    assert train.main(["--config", str(config)]) == 0
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4  # 2 epochs of 2 steps
    assert [r["step"] for r in rows(run_dir, "train")] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    assert train.main(tiny(run_dir, "--epochs", "1", "--train_subset", "16")) == 0
    return run_dir


def test_checkpoint_describes_its_preprocessing(one_epoch):
    import dataset_class
    spec = dataset_class.dataset_spec("Digits")
    for name in ("last.pt", "best.pt"):
        record = load_checkpoint(one_epoch / name)["preprocessing"]  # weights_only
        assert record == {"dataset": "Digits", "classes": [str(d) for d in range(10)],
                          "in_channels": 1, "image_size": 32, "mean": list(spec.mean),
                          "std": list(spec.std), "train_scale": list(spec.train_scale_at(32)),
                          "resize": "bilinear"}


# A bare state dict given as a file, or by a torchvision weights name whose file is in
# torchvision's cache (offline: loaded from there, as torch.hub finds it, never downloaded).
@pytest.mark.parametrize("flag", ["--init_from", "--weights"])
def test_pretrained_bare_state_dict_of_the_same_network(one_epoch, tmp_path, monkeypatch,
                                                        flag):
    weights = load_checkpoint(one_epoch / "last.pt")["model"]
    source = str(tmp_path / "bare.pt")
    if flag == "--weights":
        source = "VGG11_Weights.IMAGENET1K_V1"  # config A, as tiny() builds
        cache = offline_torch_cache(monkeypatch, tmp_path / "torch")
        cache.mkdir(parents=True)
        torch.save(weights, cache / cached_file_name(source))
    else:
        torch.save(weights, source)
    run_dir = tmp_path / "tuned"
    assert train.main(tiny(run_dir, "--epochs", "1", "--train_subset", "16", "--max_steps",
                           "1", "--lr", "1e-9", flag, source)) == 0
    tuned = load_checkpoint(run_dir / "last.pt")["model"]
    # lr 1e-9: one step leaves the loaded weights (not a fresh init) nearly unchanged.
    for key, value in weights.items():
        torch.testing.assert_close(tuned[key], value, rtol=0, atol=1e-6)


def test_weights_offline_without_the_file_say_which_file_goes_where(tmp_path, monkeypatch,
                                                                   capsys):
    name = "VGG11_Weights.IMAGENET1K_V1"
    cache = offline_torch_cache(monkeypatch, tmp_path / "torch")
    assert train.main(tiny(tmp_path / "run", "--weights", name)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train.py: error: --weights {name}") and "Traceback" not in err
    assert cached_file_name(name) in err and str(cache) in err
    assert err.strip().count("\n") == 0  # one paragraph
    assert not (tmp_path / "run").exists()  # no empty run directory left behind


def test_a_full_disk_at_a_save_is_a_clear_error_and_keeps_the_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "full"
    assert train.main(tiny(run_dir, "--train_subset", "16", "--max_steps", "1")) == 0
    # The next saves write through /dev/full: ENOSPC, as on a full disk.
    for name in ("last.pt", "best.pt"):
        os.symlink("/dev/full", run_dir / f".{name}.{os.getpid()}.tmp")
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--max_steps", "none"]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "Traceback" not in err
    assert load_checkpoint(run_dir / "last.pt")["step"] == 1


@pytest.mark.slow
def test_sigterm_during_validation_saves_the_trained_epoch_and_skips_validation(tmp_path):
    # A large validation set behind a one-step epoch: the signal lands in validation.
    run_dir = tmp_path / "val"
    process = subprocess.Popen(
        [sys.executable, "train.py", *tiny(run_dir, "--train_subset", "16", "--val_subset",
                                           "none", "--val_fraction", "0.9")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WANDB_MODE": "disabled"})
    deadline = time.time() + 120
    while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text()):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # the epoch's one step is logged: now validating
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    stopped = load_checkpoint(run_dir / "last.pt")
    assert (stopped["epoch"], stopped["step"], stopped["position"]) == (0, 1, 16)
    assert rows(run_dir, "epoch") == []  # validation skipped, nothing claimed
    resumed = cli("--resume", str(run_dir), "--epochs", "1", "--val_subset", "32")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in rows(run_dir, "epoch")] == [1]


def test_layers_copied_from_A_follow_the_schedule_by_default(one_epoch, tmp_path):
    # Sec. 3.1 (issue 11.1): copied layers get no *lower* rate than the rest; by default
    # every layer follows the schedule, the frozen-rate reading only when asked.
    for fixed, expected in (("false", [1e-3]), ("true", [1e-3, 1e-2])):
        run_dir = tmp_path / fixed
        assert train.main(tiny(run_dir, "--model_version", "B", "--train_subset", "16",
                               "--init", "from_A", "--init_from_A", str(one_epoch / "last.pt"),
                               "--schedule", "step", "--step_epochs", "1",
                               "--from_A_fixed_lr", fixed)) == 0
        groups = load_checkpoint(run_dir / "last.pt")["optimizer"]["param_groups"]
        assert sorted({round(g["lr"], 9) for g in groups}) == expected


def test_a_paper_preset_trains_on_all_of_train_and_decides_on_the_official_val(tmp_path,
                                                                                capsys):
    """Issue 11 point 2: as the paper, every image of ImageNet's train/ is trained on and
    the plateau decisions are taken on its official validation set; the start-of-run line
    states the iteration count (74 epochs of ceil(images / 256) steps)."""
    from tests.fakedata import write_imagenet_folders

    write_imagenet_folders(tmp_path / "ImageNet", ["n01", "n02", "n03"], per_class=5,
                           size=(40, 40))
    assert train.main(["--config", str(ROOT / "configs" / "A_S256.yaml"), "--data_root",
                       str(tmp_path), "--image_size", "32", "--train_scale", "32,40",
                       "--fc_width", "16", "--max_steps", "1", "--workers", "0",
                       "--device", "cpu", "--wandb", "disabled", "--progress", "false",
                       "--out_dir", str(tmp_path / "runs")]) == 0
    start = capsys.readouterr().out
    assert "(15 train / 15 val images" in start  # all 15 of train/, the 15 of val/
    assert "1 steps/epoch x 74 epochs = 74 iterations" in start



def test_an_imagenet_subset_trains_a_net_of_its_classes_that_resumes_and_evaluates(tmp_path,
                                                                                    capsys):
    """ImageNet-100 and the like: --dataset ImageNet on a tree of 3 of its classes trains a
    3-class network (not 1000 outputs over 3 class names, which --resume and evaluate.py
    then refused as an inconsistent checkpoint), says so, and resumes and evaluates."""
    import evaluate
    from tests.fakedata import write_imagenet_folders

    write_imagenet_folders(tmp_path / "ImageNet", ["n01", "n02", "n03"], per_class=4,
                           size=(40, 40))
    run = ["--dataset", "ImageNet", "--data_root", str(tmp_path), "--model_version", "A",
           "--width", "0.0625", "--fc_width", "16", "--image_size", "32", "--train_scale",
           "32,40", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--wandb",
           "disabled", "--progress", "false", "--out_dir", str(tmp_path / "runs"),
           "--run_name", "subset", "--resume", "auto"]
    assert train.main([*run, "--max_steps", "1"]) == 0
    assert "ImageNet has 1000 classes, the training set under" in capsys.readouterr().err
    checkpoint = torch.load(tmp_path / "runs" / "subset" / "last.pt", weights_only=True)
    assert checkpoint["model_args"]["num_classes"] == 3
    assert checkpoint["preprocessing"]["classes"] == ["n01", "n02", "n03"]
    assert train.main([*run, "--max_steps", "2"]) == 0
    resumed = capsys.readouterr().out
    assert "resuming at epoch 1 step 1" in resumed and "at step 2 (epoch 1)" in resumed
    assert evaluate.main(["--checkpoint", str(tmp_path / "runs" / "subset" / "last.pt"),
                          "--data_root", str(tmp_path), "--device", "cpu", "--workers", "0",
                          "--progress", "false", "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert (result["samples"], result["class_names"]) == (12, ["n01", "n02", "n03"])


PROGRESS_LINE = re.compile(
    r"step (\d+)/(\d+) \(epoch ([\d.]+)/(\d+)\) \| loss ([\d.]+) top-1 err ([\d.]+)% \| "
    r"lr ([\d.e+-]+) \| (\d+) img/s, data wait (\d+)% \| eta (\d+):(\d\d):(\d\d)")
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .* (\d+) img/s \| eta (\d+):(\d\d):(\d\d)( \| best)?")


def test_without_a_terminal_each_log_interval_prints_one_plain_line(tmp_path):
    """Issue 15: a cluster job's log (stdout a file or pipe, as here) gets one parseable
    line per log interval, with the metrics file's numbers, and no progress bar."""
    run_dir = tmp_path / "plain"
    run = cli(*tiny(run_dir, "--log_interval", "2", "--progress", "true"))
    assert run.returncode == 0, run.stderr
    lines = [m for line in run.stdout.splitlines() if (m := PROGRESS_LINE.fullmatch(line))]
    logged = rows(run_dir, "train")
    assert [int(m[1]) for m in lines] == [r["step"] for r in logged] == [2, 4, 6, 8, 10, 12]
    for m, row in zip(lines, logged, strict=True):
        assert (int(m[2]), float(m[3]), int(m[4])) == (12, round(row["step"] / 6, 2), 2)
        assert float(m[5]) == round(row["loss"], 4)
        assert float(m[6]) == round(100 * row["top1_err"], 2)
        assert float(m[7]) == pytest.approx(row["lr"], rel=1e-2)
        assert int(m[8]) == round(row["images_per_s"])
        assert 0 <= row["data_wait"] < 1 and int(m[9]) == round(100 * row["data_wait"])
        assert "max_memory_gib" not in row  # a CPU run has no GPU memory to report
    assert tuple(map(int, lines[-1].groups()[-3:])) == (0, 0, 0)  # eta at the last step
    assert "GiB" not in run.stdout and "it/s" not in run.stderr  # no memory, no tqdm bar
    # The epoch summary: images/s over the epoch's training (not its validation) and eta.
    epochs = [m for line in run.stdout.splitlines() if (m := EPOCH_LINE.fullmatch(line))]
    for m, row in zip(epochs, rows(run_dir, "epoch"), strict=True):
        assert int(m[2]) == round(row["images_per_s"])
        assert row["images_per_s"] >= 96 / row["epoch_time"]  # 96 images, trained in less
    assert len(epochs) == 2 and tuple(map(int, epochs[-1].groups()[2:5])) == (0, 0, 0)
    # Validation (issue 22 item 8): no silent pause, a line as each tenth of its 32 images
    # is done, in batches of 8.
    validation = re.findall(r"^validation, epoch (\d+): (\d+)/32 img \(\d+%\) \| \d+ img/s$",
                            run.stdout, re.MULTILINE)
    assert validation == [(e, n) for e in "12" for n in ("8", "16", "24", "32")]


def test_on_a_terminal_the_bar_shows_images_per_second_at_every_refresh(tmp_path):
    # stdout and stderr a terminal (a pseudo-terminal 200 columns wide): tqdm's bar, whose
    # postfix carries img/s every time, and no plain lines.
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "train.py", *tiny(tmp_path / "bar", "--progress", "true",
                                           "--log_interval", "2", "--epochs", "1")],
        cwd=ROOT, stdin=secondary, stdout=secondary, stderr=secondary,
        env={**os.environ, "WANDB_MODE": "disabled"})
    os.close(secondary)
    output, deadline = b"", time.time() + 300
    try:
        while time.time() < deadline and select.select([primary], [], [], 1)[0] or \
                process.poll() is None:
            assert time.time() < deadline
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        process.wait(timeout=60)
    assert process.returncode == 0
    text = output.decode(errors="replace")
    bars = [s for s in re.split(r"[\r\n]", text) if "epoch 1/1:" in s and "loss=" in s]
    assert bars and all(re.search(r"img/s=\d+", bar) for bar in bars), bars
    assert not re.search(r"^step \d+/", text, re.MULTILINE)


def test_resume_auto_starts_the_named_run_then_continues_it(tmp_path):
    """Issue 15: a requeued cluster job reruns the same command; --resume auto starts the
    run directory on the first call and continues its newest checkpoint on the next."""
    run_dir = tmp_path / "requeued"
    first = cli(*tiny(run_dir, "--resume", "auto", "--max_steps", "5"))
    assert first.returncode == 0, first.stderr
    assert "resuming" not in first.stdout and load_checkpoint(run_dir / "last.pt")["step"] == 5
    second = cli(*tiny(run_dir, "--resume", "auto", "--max_steps", "none"))
    assert second.returncode == 0, second.stderr
    assert "resuming at epoch 1 step 5" in second.stdout
    assert load_checkpoint(run_dir / "last.pt")["step"] == 12
    assert [r["step"] for r in rows(run_dir, "train")] == list(range(1, 13))
    # Requeued once more after the end: nothing is trained again.
    third = cli(*tiny(run_dir, "--resume", "auto", "--max_steps", "none"))
    assert third.returncode == 0 and "done" in third.stdout
    assert [r["step"] for r in rows(run_dir, "train")] == list(range(1, 13))


def test_resume_auto_without_a_run_name_is_a_clear_error(tmp_path, capsys):
    args = tiny(tmp_path / "x", "--resume", "auto")
    args = args[:args.index("--run_name")] + args[args.index("--run_name") + 2:]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "--resume auto" in err and "--run_name" in err and "Traceback" not in err


@needs_wandb
def test_unreachable_wandb_is_one_warning_and_the_run_goes_on_offline(tmp_path):
    """Issue 15: a key set and no network (a compute node): W&B's init fails; the run warns
    once, logs to W&B offline and completes its metrics file. The server is a closed local
    port; wandb's own init timeout is shortened so that it gives up in seconds."""
    run_dir = tmp_path / "nonet"
    env = {**os.environ, "WANDB_MODE": "online", "WANDB_API_KEY": "0" * 40,
           "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "5"}
    run = subprocess.run(
        [sys.executable, "train.py", *tiny(run_dir, "--wandb", "auto", "--epochs", "1")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: W&B")]
    assert len(warnings) == 1 and "offline" in warnings[0], run.stderr
    assert [r["step"] for r in rows(run_dir, "train")] == list(range(1, 7))
    assert len(rows(run_dir, "epoch")) == 1
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    logged = [h["train/loss"] for h in wandb_history(files[0]) if "train/loss" in h]
    assert logged == pytest.approx([r["loss"] for r in rows(run_dir, "train")])


@needs_wandb
def test_a_resumed_run_sends_wandb_each_step_once(tmp_path, monkeypatch):
    """W&B takes steps in increasing order only: after a kill that came after steps 4 and
    5 were logged but before their checkpoint, the resumed run must not send them again."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "w"
    killed_after_logging(run_dir, "--wandb", "offline")
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 3 and len({f.name for f in files}) == 1  # one W&B run, 3 sessions
    steps = [h["_step"] for f in files for h in wandb_history(f)]
    assert steps == list(range(1, 13))
    assert [r["step"] for r in rows(run_dir, "train")] == list(range(1, 13))
