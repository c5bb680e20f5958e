"""The everyday path of a student with their own photos (issue 14's acceptance): fine-tune
from a torchvision-format state dict with train.py, then evaluate.py with each protocol,
predict.py and vgg.export on the run, each step's output checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.fakedata import class_color
from tests.test_pretrained import image_loader, train_briefly
from vgg.checkpoint import load_checkpoint
from vgg.model import build_vgg
from vgg.pretrained import PREPROCESSING_KEY

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "owl"]


def write_photo_folder(root: Path) -> None:
    """train/ val/ test/ of noisy class-coloured JPEGs of 40x52 pixels."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4), ("test", 4)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = np.array(class_color(label))[None, None] + rng.normal(0, 30, (40, 52, 3))
                cv2.imwrite(str(root / split / name / f"{i}.jpg"),
                            np.clip(image, 0, 255).astype(np.uint8)[..., ::-1])


@pytest.mark.slow
def test_fine_tune_predict_export(tmp_path):
    torch.manual_seed(0)
    source = build_vgg("A", num_classes=8, image_size=32, batch_norm=True, fc_width=32,
                       dropout=0.0)
    train_briefly(source, image_loader(tmp_path / "source", list("abcdefgh"), 4), 4, 0.01)
    # torchvision's format (a bare state dict), with the preprocessing record that
    # vgg.export puts where torchvision's loading ignores it: how image_loader fed it.
    state = source.state_dict()
    state._metadata[""][PREPROCESSING_KEY] = {"mean": [0.5] * 3, "std": [0.25] * 3,
                                              "train_scale": [32, 40]}
    torch.save(state, tmp_path / "pretrained.pth")
    write_photo_folder(tmp_path / "photos")
    run = tmp_path / "runs" / "ft"
    train = subprocess.run(
        [sys.executable, "train.py", "--dataset", "ImageFolder", "--data_root",
         str(tmp_path / "photos"), "--model_version", "A", "--batch_norm", "true",
         "--image_size", "32", "--fc_width", "32", "--init_from", str(tmp_path / "pretrained.pth"),
         "--freeze", "features", "--pretrained_lr_multiplier", "0.1", "--lr", "0.01",
         "--epochs", "4", "--batch_size", "8", "--workers", "0", "--device", "cpu",
         "--wandb", "disabled", "--progress", "false", "--out_dir", str(run.parent),
         "--run_name", "ft"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr
    assert "new (random init) classifier.6: 3 classes here, 8 in the weights" in train.stdout
    checkpoint = load_checkpoint(run / "best.pt")
    for key, value in source.state_dict().items():  # frozen: exactly the pretrained features
        if key.startswith("features."):
            assert torch.equal(checkpoint["model"][key], value), key
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert min(r["val_top1_err"] for r in rows if r["kind"] == "epoch") < 0.5  # chance: 2/3

    for protocol in ("center", "dense", "multicrop", "dense+multicrop"):
        result = tmp_path / f"eval_{protocol}.json"
        evaluated = subprocess.run(
            [sys.executable, "evaluate.py", "--checkpoint", str(run / "best.pt"), "--protocol",
             protocol, "--workers", "0", "--progress", "false", "--out", str(result)],
            cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert evaluated.returncode == 0, evaluated.stderr
        scored = json.loads(result.read_text())
        assert scored["split"] == "test" and scored["samples"] == 12, protocol  # test/ only
        assert scored["top1_correct"] >= 6, protocol  # chance: 4 of 12

    out = tmp_path / "predictions.json"
    predicted = subprocess.run([sys.executable, "predict.py", str(tmp_path / "photos" / "test"),
                                "--checkpoint", str(run), "--out", str(out)], cwd=ROOT,
                               capture_output=True, text=True, timeout=900)
    assert predicted.returncode == 0, predicted.stderr
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 12
    right = sum(Path(p["file"]).parent.name == p["top_k"][0]["class"] for p in predictions)
    assert right >= 6  # chance: 4 of 12

    exported = subprocess.run([sys.executable, "-m", "vgg.export", str(run)], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
    assert exported.returncode == 0, exported.stderr
    program = torch.export.load(run / "export" / "best.pt2").module()
    model = build_vgg(**checkpoint["model_args"], init=None).eval()
    model.load_state_dict(torch.load(run / "export" / "best_weights.pth", weights_only=True))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)
