"""Issue 24: one validation of a checkpoint's contents, applied by every command that reads
one (evaluate.py, predict.py, python -m vgg.export; train.py's --resume and --init_from go
through the same vgg.checkpoint.load_checkpoint). Each crafted checkpoint is a real file
written by torch.save; each command must refuse it with one paragraph, exit 2, no
traceback, before any work."""

from __future__ import annotations

import copy
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import evaluate
import predict
from vgg import export
from vgg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vgg.model import build_vgg

ROOT = Path(__file__).resolve().parents[1]
ARGS = {"version": "A", "num_classes": 3, "in_channels": 3, "image_size": 32,
        "batch_norm": False, "fc_width": 16, "dropout": 0.5, "width": 0.125}
RECORD = {"dataset": "ImageFolder", "classes": ["cat", "dog", "owl"], "in_channels": 3,
          "image_size": 32, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
          "train_scale": [36, 44], "resize": "bilinear"}


def good_checkpoint() -> dict:
    torch.manual_seed(0)
    return {"model": build_vgg(**ARGS).state_dict(), "model_args": dict(ARGS),
            "preprocessing": copy.deepcopy(RECORD),
            "config": {"dataset": "ImageFolder", "data_root": "moved", "val_fraction": 0.1}}


def shared_references(depth: int = 9) -> list:
    """A list holding the same list 9 times, 9 levels deep: 9^9 items to a naive repr()."""
    item: list = [0]
    for _ in range(depth):
        item = [item] * 9
    return item


def craft(change):
    def crafted():
        checkpoint = good_checkpoint()
        change(checkpoint)
        return checkpoint
    return crafted


def set_in(entry: str, key: str, value):
    return craft(lambda c: c[entry].__setitem__(key, value))


def weight(fill):
    return craft(lambda c: c["model"].__setitem__("classifier.6.weight",
                                                  fill(c["model"]["classifier.6.weight"])))


# (crafted checkpoint, a phrase the error must hold)
CRAFTED = {
    "nan-weights": (weight(lambda w: torch.full_like(w, float("nan"))), "non-finite weights"),
    "int64-weights": (weight(lambda w: (w * 100).long()), "holds torch.int64"),
    "complex-weights": (weight(lambda w: w.to(torch.complex64)), "holds torch.complex64"),
    "std-zero": (set_in("preprocessing", "std", [0.2, 0.0, 0.3]), "std"),
    "std-negative": (set_in("preprocessing", "std", [0.2, -0.25, 0.3]), "std"),
    "std-nan": (set_in("preprocessing", "std", [0.2, float("nan"), 0.3]), "std"),
    "mean-wrong-length": (set_in("preprocessing", "mean", [0.5]), "mean"),
    "classes-short": (set_in("preprocessing", "classes", ["cat"]), "3 class names"),
    "classes-not-names": (set_in("preprocessing", "classes", [1, 2, 3]), "3 class names"),
    "train-scale-text": (set_in("preprocessing", "train_scale", "big"), "training scale"),
    "train-scale-zero": (set_in("preprocessing", "train_scale", [0, 0]), "training scale"),
    "train-scale-reversed": (set_in("preprocessing", "train_scale", [44, 36]),
                             "training scale"),
    "model-args-wrong-type": (set_in("model_args", "num_classes", "3"), "expected a int"),
    "model-args-unknown": (set_in("model_args", "depth", 16), "unknown entries"),
    "model-args-not-a-dict": (craft(lambda c: c.__setitem__("model_args", ["A"])),
                              "not a dict"),
    "bad-version": (set_in("model_args", "version", "Z"), "none of Table 1's"),
    "bad-image-size": (set_in("model_args", "image_size", 33), "multiple of 32"),
    "absurd-width": (set_in("model_args", "width", 1e5), "GiB"),
    "absurd-fc-width": (set_in("model_args", "fc_width", 10**9), "GiB"),
    "absurd-image-size": (craft(lambda c: (c["model_args"].__setitem__("image_size", 32 * 10**5),
                                           c["preprocessing"].update(image_size=32 * 10**5,
                                                                     train_scale=[32 * 10**5]))),
                          "GiB"),
    "shared-list-preprocessing": (set_in("preprocessing", "mean", shared_references()), "mean"),
    "shared-list-model-args": (set_in("model_args", "fc_width", shared_references()),
                               "fc_width"),
    "shared-list-config": (set_in("config", "data_root", shared_references()), "data_root"),
}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "a.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    return path


def commands(path: Path, photo: Path, out: Path):
    return {"evaluate": lambda: evaluate.main(["--checkpoint", str(path), "--data_root",
                                               str(out / "data"), "--out", str(out / "r.json")]),
            "predict": lambda: predict.main([str(photo), "--checkpoint", str(path), "--out",
                                             str(out / "p.csv")]),
            "export": lambda: export.main([str(path), "--out", str(out / "export")])}


@pytest.mark.parametrize("case", CRAFTED)
def test_every_command_refuses_a_crafted_checkpoint(case, photo, tmp_path, capsys):
    make, phrase = CRAFTED[case]
    path = tmp_path / "crafted.pt"
    save_checkpoint(make(), path)
    for name, run in commands(path, photo, tmp_path).items():
        assert run() == 2, (case, name)
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err and err.count("\n") == 1, (name, err)
        assert len(err) < 1000, (name, err)  # a capped repr, not 9^9 items
        assert not (tmp_path / "r.json").exists() and not (tmp_path / "export").exists()


def test_a_good_checkpoint_passes_the_same_validation(tmp_path):
    save_checkpoint(good_checkpoint(), tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt")["preprocessing"] == RECORD


def test_shared_reference_lists_do_not_hang_evaluate(tmp_path):
    """A normal-sized checkpoint whose config holds a 9^9-item shared list (in an entry no
    command checks): evaluate.py finishes (here: refuses the missing data) at once. The
    timeout is a hang guard only."""
    checkpoint = good_checkpoint()
    checkpoint["config"]["notes"] = shared_references()
    checkpoint["preprocessing"]["mean"] = shared_references()
    save_checkpoint(checkpoint, tmp_path / "bomb.pt")
    result = subprocess.run([sys.executable, "evaluate.py", "--checkpoint",
                             str(tmp_path / "bomb.pt")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "preprocessing mean" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr) < 1000


def recompress(source: Path, target: Path) -> None:
    """The same zip entries, deflated (torch.save stores them uncompressed)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w",
                                                         zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_compressed_entries_are_checked_against_the_network_before_unpacking(tmp_path):
    """Issue 24, item 11: 256 MiB of zeros deflate to a few hundred KB; the network of
    model_args (under 1 MB of weights) cannot need them, so the file is refused
    before its entries are unpacked. The same checkpoint recompressed without them loads."""
    checkpoint = good_checkpoint()
    save_checkpoint(checkpoint, tmp_path / "plain.pt")
    recompress(tmp_path / "plain.pt", tmp_path / "small.pt")
    assert load_checkpoint(tmp_path / "small.pt")["model_args"] == ARGS
    checkpoint["padding"] = torch.zeros(64 * 2**20)  # 256 MiB
    save_checkpoint(checkpoint, tmp_path / "big.pt")
    recompress(tmp_path / "big.pt", tmp_path / "bomb.pt")
    (tmp_path / "big.pt").unlink()
    assert (tmp_path / "bomb.pt").stat().st_size < 2 * 2**20
    with pytest.raises(CheckpointError, match="compressed.*256.* MiB once unpacked"):
        load_checkpoint(tmp_path / "bomb.pt")
