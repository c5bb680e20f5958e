"""predict.py on a folder of real JPEG/PNG files (written by OpenCV and PIL) with a
checkpoint saved in the trainer's format: its output checked against the network's own
forward pass on independently prepared inputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import predict
from vgg.checkpoint import save_checkpoint
from vgg.model import build_vgg
from vgg.transforms import EvalTransform

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "owl"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
PREPROCESSING = {"dataset": "ImageFolder", "classes": CLASSES, "in_channels": 3,
                 "image_size": 32, "mean": MEAN, "std": STD, "train_scale": [36, 44],
                 "resize": "bilinear"}
Q = 40  # Sec. 3.2's single test scale for S in [36, 44]


def write_photos(folder: Path) -> list[Path]:
    """Textured photos of several sizes and formats, one unreadable file, one non-image."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(48, 60), (60, 45), (40, 40), (50, 70), (44, 66)]):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image[: height // 2] //= 2  # some structure: a darker top half
        path = folder / ("sub" if i % 2 else "") / f"photo{i}{'.png' if i == 3 else '.jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            Image.fromarray(image).save(path, quality=90)
        else:
            cv2.imwrite(str(path), image[..., ::-1])
        paths.append(path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return paths


@pytest.fixture()
def run_dir(tmp_path):
    """A checkpoint as train.py writes it, with optimizer state and the preprocessing."""
    torch.manual_seed(0)
    model_args = {"version": "A", "num_classes": 3, "in_channels": 3, "image_size": 32,
                  "batch_norm": True, "fc_width": 32, "dropout": 0.5}
    model = build_vgg(**model_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.no_grad():
        for m in model.modules():  # BN statistics other than the identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    run = tmp_path / "runs" / "my-run"
    run.mkdir(parents=True)
    save_checkpoint({"model": model.state_dict(), "model_args": model_args,
                     "config": {"dataset": "ImageFolder", "data_root": "moved-away"},
                     "preprocessing": PREPROCESSING, "optimizer": optimizer.state_dict(),
                     "epoch": 3}, run / "best.pt")
    return run, model.eval()


def expected_posteriors(model, path: Path) -> torch.Tensor:
    """Independent preparation: float bilinear rescale (pixel centres aligned, as cv2),
    torchvision's centre-crop rounding, (x / 255 - mean) / std."""
    image = torch.from_numpy(cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)).permute(2, 0, 1)
    height, width = image.shape[1:]
    size = (Q, int(Q * width / height)) if height <= width else (int(Q * height / width), Q)
    resized = F.interpolate(image[None].double(), size=size, mode="bilinear",
                            align_corners=False)[0]
    top, left = round((size[0] - 32) / 2), round((size[1] - 32) / 2)
    crop = resized[:, top:top + 32, left:left + 32] / 255
    x = (crop - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        return model(x[None].float()).softmax(1)[0]


def test_predictions_on_a_photo_folder(run_dir, tmp_path, capsys):
    run, model = run_dir
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "results.csv"
    assert predict.main([str(tmp_path / "photos"), "--checkpoint", str(run), "--top_k", "5",
                         "--out", str(out), "--batch_size", "2", "--progress", "false"]) == 0
    rows = list(csv.DictReader(out.open()))
    predicted = {r["file"]: r for r in rows if not r["error"]}
    assert set(predicted) == {str(p) for p in photos}  # notes.txt is not an image
    assert [r["file"] for r in rows if r["error"] == "unreadable"] == [
        str(tmp_path / "photos" / "broken.jpg")]
    for path in photos:
        row = predicted[str(path)]
        names = [row[f"class_{i}"] for i in (1, 2, 3)]  # top_k 5 of 3 classes: all 3
        probabilities = [float(row[f"probability_{i}"]) for i in (1, 2, 3)]
        assert sorted(names) == CLASSES
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert probabilities == sorted(probabilities, reverse=True)
        expected = expected_posteriors(model, path)
        # Both resamplings sit within rounding (the toolkit's works on uint8 pixels).
        got = torch.tensor([probabilities[names.index(c)] for c in CLASSES])
        torch.testing.assert_close(got, expected, atol=3e-3, rtol=0)
        assert names[0] == CLASSES[int(expected.argmax())]
    printed = capsys.readouterr()
    assert "broken.jpg" in printed.err and f"{photos[0]}: " in printed.out


def test_predictions_equal_the_network_on_the_same_tensor(run_dir, tmp_path):
    """Through every protocol's batching, the probabilities are the network's softmax on the
    tensor EvalTransform prepares from the recorded preprocessing."""
    run, model = run_dir
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "results.json"
    assert predict.main([*map(str, photos), "--checkpoint", str(run / "best.pt"), "--top_k",
                         "2", "--out", str(out), "--protocol", "dense"]) == 0
    results = json.loads(out.read_text())
    assert results["scale"] == Q and results["unreadable"] == []
    transform = EvalTransform(Q, None, MEAN, STD)
    for path, row in zip(photos, results["predictions"], strict=True):
        assert row["file"] == str(path) and len(row["top_k"]) == 2
        image = transform(cv2.imread(str(path), cv2.IMREAD_COLOR_RGB))
        with torch.no_grad():  # Sec. 3.2 dense: mean of the score map, softmax, + flip
            dense = model.to_dense()
            expected = 0.5 * (dense(image[None]).mean((2, 3)).softmax(1)
                              + dense(image.flip(-1)[None]).mean((2, 3)).softmax(1))[0]
        top = expected.topk(2)
        assert [t["class"] for t in row["top_k"]] == [CLASSES[i] for i in top.indices]
        torch.testing.assert_close(torch.tensor([t["probability"] for t in row["top_k"]]),
                                   top.values, atol=1e-5, rtol=1e-5)


def test_older_checkpoint_and_grey_input_fall_back_to_the_dataset_spec(tmp_path):
    # A checkpoint from before "preprocessing" was recorded, on 1-channel Digits: the
    # normalisation comes from the dataset's spec, the classes are numbered.
    torch.manual_seed(0)
    args = {"version": "A", "num_classes": 10, "in_channels": 1, "image_size": 32,
            "fc_width": 16}
    model = build_vgg(**args).eval()
    save_checkpoint({"model": model.state_dict(), "model_args": args,
                     "config": {"dataset": "Digits", "train_scale": None}},
                    tmp_path / "old.pt")
    photo = write_photos(tmp_path / "photos")[0]
    out = tmp_path / "out.json"
    assert predict.main([str(photo), "--checkpoint", str(tmp_path / "old.pt"), "--top_k", "10",
                         "--out", str(out)]) == 0
    row = json.loads(out.read_text())["predictions"][0]
    grey = cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE)
    x = EvalTransform(32, 32, (0.3050,), (0.3757,))(grey)  # Digits' spec, Q = S = 32
    with torch.no_grad():
        expected = model(x[None]).softmax(1)[0]
    got = torch.tensor([t["probability"] for t in sorted(row["top_k"],
                                                        key=lambda t: int(t["class"]))])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_newest_run_is_the_default(run_dir, tmp_path, monkeypatch, capsys):
    run, _ = run_dir
    photo = write_photos(tmp_path / "photos")[0]
    monkeypatch.chdir(tmp_path)
    assert predict.main([str(photo)]) == 0
    captured = capsys.readouterr()
    assert str(Path("runs") / "my-run" / "best.pt") in captured.err
    assert captured.out.startswith(f"{photo}: ")


@pytest.mark.parametrize("argv, message", [
    (["missing.jpg"], "missing.jpg is neither an image file nor a folder"),
    (["{photos}", "--out", "results.txt"], "name a .csv or .json file"),
    (["{photos}", "--checkpoint", "nowhere.pt"], "no file or run directory nowhere.pt"),
    (["{photos}", "--scale", "16"], "--scale 16 is below the network's image size 32"),
    (["{empty}"], "no image files"),
    (["{photos}", "--top_k", "0"], "--top_k must be at least 1, got 0"),
])
def test_bad_input_is_a_clear_error(run_dir, tmp_path, capsys, argv, message):
    run, _ = run_dir
    write_photos(tmp_path / "photos")
    (tmp_path / "empty").mkdir()
    argv = [a.format(photos=tmp_path / "photos", empty=tmp_path / "empty") for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(run)]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("predict.py: error: ") and message in err


def test_command_line(run_dir, tmp_path):
    run, _ = run_dir
    photo = write_photos(tmp_path / "photos")[0]
    ok = subprocess.run([sys.executable, "predict.py", str(photo), "--checkpoint", str(run),
                         "--top_k", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{photo}: ") and ok.stdout.count("%") == 1
    bad = subprocess.run([sys.executable, "predict.py", str(photo), "--progress", "maybe"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--progress" in bad.stderr and "Traceback" not in bad.stderr
