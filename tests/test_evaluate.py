"""evaluate.py and vgg/evaluation.py: the paper's test protocols (Sec. 3.2) checked against
hand computations and torchvision's own model."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from vgg.checkpoint import CheckpointError
from vgg.evaluation import (
    EvaluationError,
    Evaluator,
    Tally,
    center_crop,
    grid_positions,
    multicrop_inputs,
    network_from_torchvision,
    paper_scales,
    paper_table,
    resolve_scales,
)
from vgg.model import build_vgg

CLASSES = 7


def tiny(seed: int = 0, image_size: int = 32, batch_norm: bool = False, in_channels: int = 3,
         num_classes: int = CLASSES):
    torch.manual_seed(seed)
    model = build_vgg("A", num_classes=num_classes, in_channels=in_channels,
                      image_size=image_size, batch_norm=batch_norm, fc_width=64)
    if batch_norm:  # non-trivial running statistics, so eval-mode BN is really exercised
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def softmax_of(model, x):
    with torch.no_grad():
        return model(x).softmax(1)


# --------------------------------------------------------------------------- geometry

def test_grid_positions_span_the_image():
    assert grid_positions(48, 32) == [0, 4, 8, 12, 16]
    assert grid_positions(256, 224) == [0, 8, 16, 24, 32]
    assert grid_positions(341, 224) == [0, 29, 59, 88, 117]  # 29.25, 58.5 -> 59, 87.75
    assert grid_positions(32, 32) == [0] * 5
    with pytest.raises(EvaluationError):
        grid_positions(31, 32)


def test_multicrop_is_the_5x5_grid_and_its_flips():
    height, width, size = 40, 57, 32
    image = torch.arange(2 * height * width, dtype=torch.float32).view(2, height, width)
    crops = multicrop_inputs(image, size)
    assert crops.shape == (50, 2, size, size)
    tops = [round(i * (height - size) / 4) for i in range(5)]   # 0, 2, 4, 6, 8
    lefts = [0, 6, 13, 19, 25]  # 0, 6.25, 12.5, 18.75, 25: rounded half-up
    assert tops == [0, 2, 4, 6, 8] and grid_positions(width, size) == lefts
    expected = [image[:, t:t + size, l:l + size] for t in tops for l in lefts]
    for i, crop in enumerate(expected):
        assert torch.equal(crops[i], crop)
        assert torch.equal(crops[25 + i], crop.flip(-1))
    # corners included: top-left and bottom-right pixels of the image are in some crop
    assert crops[0, 0, 0, 0] == image[0, 0, 0]
    assert crops[24, 0, -1, -1] == image[0, -1, -1]


def test_center_crop_matches_torchvision():
    import torchvision.transforms.v2.functional as F

    image = torch.rand(3, 45, 70)
    assert torch.equal(center_crop(image, 32), F.center_crop(image, [32, 32]))
    image = torch.rand(3, 33, 32)
    assert torch.equal(center_crop(image, 32), F.center_crop(image, [32, 32]))


# --------------------------------------------------------------------------- scales

def test_paper_scales():
    assert paper_scales(256, "single") == [256]
    assert paper_scales([256, 256], "multi") == [224, 256, 288]
    assert paper_scales([384, 384], "multi") == [352, 384, 416]
    assert paper_scales([256, 512], "single") == [384]
    assert paper_scales([256, 512], "multi") == [256, 384, 512]
    assert resolve_scales(["multi", "256", 320], (256, 512), 224) == [256, 320, 384, 512]
    assert resolve_scales([32], None, 32) == [32]


def test_bad_scales_are_clear_errors():
    with pytest.raises(EvaluationError, match="below the network's image size 224"):
        resolve_scales([200], None, 224)
    with pytest.raises(EvaluationError, match="below"):  # {S-32, S, S+32} at S = 32
        resolve_scales(["multi"], (32, 32), 32)
    with pytest.raises(EvaluationError, match="--train_scale"):
        resolve_scales(["single"], None, 224)
    with pytest.raises(EvaluationError, match="integers or one of"):
        resolve_scales(["big"], (256, 256), 224)
    with pytest.raises(EvaluationError, match="unknown protocol"):
        Evaluator([tiny()], "ten-crop")


# --------------------------------------------------------------------------- protocols

def test_center_is_the_network_on_the_centre_crop():
    model = tiny()
    images = [torch.randn(3, 40, 52), torch.randn(3, 32, 47)]
    got = Evaluator([model], "center").posteriors([(image,) for image in images])
    expected = torch.cat([softmax_of(model, image[None, :, t:t + 32, l:l + 32])
                          for image, (t, l) in zip(images, [(4, 10), (0, 8)], strict=True)])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_dense_at_q_equal_image_size_is_center(batch_norm):
    model = tiny(batch_norm=batch_norm)
    image = torch.randn(3, 32, 32)
    center = Evaluator([model], "center").posteriors([(image,)])
    dense_no_flip = Evaluator([model], "dense", flip=False).posteriors([(image,)])
    torch.testing.assert_close(dense_no_flip, center)
    # with the paper's flip: the mean of the image's and its mirror's posteriors
    dense = Evaluator([model], "dense").posteriors([(image,)])
    expected = 0.5 * (softmax_of(model, image[None]) + softmax_of(model, image.flip(-1)[None]))
    torch.testing.assert_close(dense, expected)
    # a left-right symmetric image: dense with flip equals center exactly as the paper's
    symmetric = torch.cat([image[:, :, :16], image[:, :, :16].flip(-1)], -1)
    torch.testing.assert_close(Evaluator([model], "dense").posteriors([(symmetric,)]),
                               Evaluator([model], "center").posteriors([(symmetric,)]))


def test_dense_averages_the_score_map_then_softmaxes():
    """Independent truth: the FC classifier applied at every position of the conv feature
    map (what FC-as-conv computes), scores averaged over positions, then softmax."""
    model = tiny(image_size=64)  # FC1 sees a 2x2x512 window: a real 2x2 kernel
    image = torch.randn(3, 96, 128)  # feature map 3x4 -> score map 2x3
    with torch.no_grad():
        features = model.features(image[None])[0]
        flipped = model.features(image.flip(-1)[None])[0]

        def averaged_scores(fmap):
            scores = [model.classifier(fmap[:, i:i + 2, j:j + 2].reshape(1, -1))
                      for i in range(fmap.shape[1] - 1) for j in range(fmap.shape[2] - 1)]
            assert len(scores) == 6
            return torch.cat(scores).mean(0, keepdim=True)

        expected = 0.5 * (averaged_scores(features).softmax(1)
                          + averaged_scores(flipped).softmax(1))
    got = Evaluator([model], "dense").posteriors([(image,)])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_dense_groups_images_of_different_sizes():
    model = tiny()
    images = [torch.randn(3, 32, 48), torch.randn(3, 40, 32), torch.randn(3, 32, 48)]
    together = Evaluator([model], "dense", batch_size=1).posteriors([(i,) for i in images])
    alone = torch.cat([Evaluator([model], "dense").posteriors([(i,)]) for i in images])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)


def test_multicrop_averages_50_crop_posteriors():
    model = tiny()
    image = torch.randn(3, 36, 44)
    tops, lefts = [0, 1, 2, 3, 4], [0, 3, 6, 9, 12]
    crops = torch.stack([image[:, t:t + 32, l:l + 32] for t in tops for l in lefts])
    expected = 0.5 * (softmax_of(model, crops).mean(0) + softmax_of(model, crops.flip(-1)).mean(0))
    got = Evaluator([model], "multicrop", batch_size=7).posteriors([(image,)])
    torch.testing.assert_close(got[0], expected)


def test_scales_networks_and_dense_plus_multicrop_average_posteriors():
    a, b = tiny(0), tiny(1)
    small, large = torch.randn(3, 32, 40), torch.randn(3, 48, 60)  # one image at two scales

    def single(model, protocol, image):
        return Evaluator([model], protocol).posteriors([(image,)])

    both = Evaluator([a, b], "dense+multicrop").posteriors([(small, large)])
    expected = sum(0.5 * (single(m, "dense", x) + single(m, "multicrop", x))
                   for m in (a, b) for x in (small, large)) / 4
    torch.testing.assert_close(both, expected)
    assert torch.allclose(both.sum(1), torch.ones(1))


# --------------------------------------------------------------------------- counting

def test_tally_hand_computed():
    # 3 classes (fewer than 5: top-5 always right), ties count against the model.
    scores = torch.tensor([
        [0.7, 0.2, 0.1],  # target 0: right, predicted 0
        [0.4, 0.4, 0.2],  # target 1: tied with class 0 -> wrong, entered as predicted 0
        [0.1, 0.3, 0.6],  # target 0: wrong, predicted 2
        [0.2, 0.5, 0.3],  # target 1: right
        [0.3, 0.3, 0.4],  # target 2: right
    ])
    tally = Tally(3)
    tally.update(scores[:2], torch.tensor([0, 1]))
    tally.update(scores[2:], torch.tensor([0, 1, 2]))
    summary = tally.summary()
    assert summary["samples"] == 5
    assert summary["top1_correct"] == 3 and summary["top5_correct"] == 5
    assert summary["top1_error"] == pytest.approx(0.4) and summary["top5_error"] == 0
    assert tally.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert summary["per_class"]["count"] == [2, 2, 1]
    assert summary["per_class"]["top1_accuracy"] == [0.5, 0.5, 1.0]


def test_tally_counts_non_finite_posteriors_wrong():
    tally = Tally(10)
    scores = torch.full((2, 10), math.nan)
    scores[1] = torch.arange(10.0)
    tally.update(scores, torch.tensor([3, 9]))
    summary = tally.summary()
    assert summary["top1_correct"] == 1 and summary["top5_correct"] == 1
    assert summary["nonfinite_posteriors"] == 1
    with pytest.raises(EvaluationError, match="outside"):
        tally.update(torch.zeros(1, 10), torch.tensor([10]))


def test_paper_table_layout():
    table = paper_table([{"config": "D", "train_S": "[256;512]", "test_Q": "256,384,512",
                          "method": "dense", "top1_error": 0.248, "top5_error": 0.075}])
    assert table.splitlines()[2] == "| D | [256;512] | 256,384,512 | dense | 24.8 | 7.5 |"


# --------------------------------------------------------------------------- torchvision

@pytest.mark.slow  # a full-size VGG-11 at 224 (about 15 s on 2 cores)
def test_torchvision_weights_give_torchvision_predictions(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.vgg11(weights=None, num_classes=3).eval()
    path = tmp_path / "vgg11.pth"
    torch.save(reference.state_dict(), path)
    network = network_from_torchvision(path)  # version and BN inferred from the keys
    assert (network.version, network.batch_norm, network.image_size) == ("A", False, 224)
    # the same preprocessed input: 2 images rescaled to Q = 240 (not cropped)
    images = torch.randn(2, 3, 240, 250)
    with torch.no_grad():
        expected = reference(torchvision.transforms.functional.center_crop(
            images, [224, 224])).softmax(1)
    got = Evaluator([network.model], "center").posteriors([(image,) for image in images])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # the wrong config is a clear error, not a silent partial load
    with pytest.raises(CheckpointError, match="different network"):
        network_from_torchvision(path, version="B", batch_norm=False)
    truncated = tmp_path / "truncated.pth"
    with open(path, "rb") as f:
        truncated.write_bytes(f.read(4096))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        network_from_torchvision(truncated)

    # evaluate.py end to end on an image folder: the same counts as torchvision's model on
    # torchvision's own preprocessing (PIL, antialiased Resize(256), CenterCrop(224))
    import cv2
    from PIL import Image
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 1), ("test", 3)):
        for label in range(3):
            for i in range(per_class):
                file = tmp_path / "folder" / split / f"class{label}" / f"{i}.png"
                file.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(file), rng.integers(0, 256, (240 + 20 * i, 300, 3), np.uint8))
    root = tmp_path / "folder"
    preprocess = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.PILToTensor(),
                             v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    files = sorted((root / "test").glob("*/*.png"))
    inputs = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([int(f.parent.name.removeprefix("class")) for f in files])
    with torch.no_grad():
        tally = Tally(3)
        tally.update(reference(inputs), labels)
    out = tmp_path / "tv.json"
    assert run_cli("--torchvision_weights", path, "--dataset", "ImageFolder", "--data_root",
                   root, "--protocol", "center", "--workers", 0, "--out", out,
                   "--no_progress") == 0
    results = json.loads(out.read_text())
    assert results["scales"] == [256] and results["samples"] == 9
    assert results["resize"] == "PIL antialiased bilinear"  # as torchvision trained them
    for key in ("top1_correct", "top5_correct"):
        assert results[key] == tally.summary()[key]
    assert results["per_class"] == tally.summary()["per_class"]


def test_results_json_round_trip(tmp_path):
    tally = Tally(2)
    tally.update(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
    json.dumps(tally.summary())  # plain types only


# --------------------------------------------------------------------------- evaluate.py

def save_tiny_checkpoint(path, seed=0, num_classes=10, in_channels=1, dataset="Digits",
                         train_scale=(32, 48)):
    from vgg.checkpoint import save_checkpoint

    model = tiny(seed, in_channels=in_channels, num_classes=num_classes)
    args = dict(version="A", num_classes=num_classes, in_channels=in_channels, image_size=32,
                batch_norm=False, fc_width=64, dropout=0.5)
    config = dict(dataset=dataset, data_root="unused", image_size=32,
                  train_scale=list(train_scale) if train_scale else None, model_version="A",
                  batch_norm=False, val_fraction=0.1, seed=0)
    save_checkpoint({"model": model.state_dict(), "model_args": args, "config": config}, path)
    return model


def run_cli(*argv):
    import evaluate

    return evaluate.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    models = [save_tiny_checkpoint(folder / f"net{i}.pt", seed=i) for i in range(2)]
    return folder, models


def digits_inputs(scales, limit):
    """The test images as dataset_class delivers them, independently of evaluate.py."""
    import dataset_class

    spec = dataset_class.dataset_spec("Digits")
    per_scale = [dataset_class.build_dataset(
        "Digits", "test", "unused", dataset_class.eval_transform(spec, 32, scale=q, crop=False))
        for q in scales]
    images = [[per_scale[s][i][0] for s in range(len(scales))] for i in range(limit)]
    labels = torch.tensor([per_scale[0][i][1] for i in range(limit)])
    return images, labels


@pytest.mark.parametrize("protocol", ["center", "dense", "multicrop", "dense+multicrop"])
def test_every_protocol_end_to_end(checkpoints, tmp_path, protocol, capsys):
    folder, (model, _) = checkpoints
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", folder / "net0.pt", "--protocol", protocol, "--scale",
                   "multi", "--limit", 4, "--workers", 0, "--out", out, "--no_progress") == 0
    results = json.loads(out.read_text())
    assert results["scales"] == [32, 40, 48]  # {Smin, (Smin+Smax)/2, Smax} of [32;48]
    assert results["samples"] == 4 and results["flip"] is False  # digits are not mirrored
    printed = capsys.readouterr().out
    assert "| A | [32;48] | 32,40,48 |" in printed and "top-5" in printed
    confusion = (tmp_path / "r_confusion.csv").read_text().splitlines()
    assert len(confusion) == 11 and sum(int(v) for line in confusion[1:]
                                         for v in line.split(",")[1:]) == 4
    # independent truth for the counts: the model's posteriors on the same inputs
    images, labels = digits_inputs([32, 40, 48], 4)
    posteriors = Evaluator([model], protocol, flip=False).posteriors(images)
    tally = Tally(10)
    tally.update(posteriors, labels)
    assert results["top1_correct"] == tally.summary()["top1_correct"]
    assert results["top5_correct"] == tally.summary()["top5_correct"]
    assert sum(results["per_class"]["count"]) == 4


def test_ensemble_averages_posteriors(checkpoints, tmp_path):
    folder, models = checkpoints
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", folder / "net0.pt", folder / "net1.pt", "--protocol",
                   "dense", "--scale", 32, 40, "--flip", "--limit", 4, "--workers", 0,
                   "--out", out, "--no_progress") == 0
    results = json.loads(out.read_text())
    assert results["table_row"]["config"] == "A & A" and results["flip"] is True
    images, labels = digits_inputs([32, 40], 4)
    mean = sum(Evaluator([m], "dense").posteriors(images) for m in models) / 2
    def dense_by_hand(model, x):  # softmax of the spatially averaged map, image + mirror
        dense = model.to_dense()
        return 0.5 * (dense(x[None]).mean((2, 3)).softmax(1)[0]
                      + dense(x.flip(-1)[None]).mean((2, 3)).softmax(1)[0])

    with torch.no_grad():  # averaged over 2 networks x 2 scales
        by_hand = torch.stack([sum(dense_by_hand(m, x) for m in models for x in sample) / 4
                               for sample in images])
    torch.testing.assert_close(mean, by_hand, rtol=1e-4, atol=1e-6)
    tally = Tally(10)
    tally.update(by_hand, labels)
    assert results["top1_correct"] == tally.summary()["top1_correct"]
    assert results["top5_correct"] == tally.summary()["top5_correct"]


def test_bad_input_is_a_clear_error(checkpoints, tmp_path, capsys):
    folder, _ = checkpoints
    good = folder / "net0.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    seven = tmp_path / "seven.pt"
    save_tiny_checkpoint(seven, num_classes=7)
    cases = [
        (["--checkpoint", truncated], "not a readable checkpoint"),
        (["--checkpoint", seven], "has 7 classes but Digits has 10"),
        (["--checkpoint", good, seven], "class count differs"),
        (["--checkpoint", good, "--scale", 16], "below the network's image size 32"),
        (["--checkpoint", good, "--dataset", "Cifar10"], "input channels"),
        (["--checkpoint", good, "--dataset", "Nope"], "unknown dataset"),
        (["--checkpoint", tmp_path / "missing.pt"], "no checkpoint file"),
    ]
    for argv, message in cases:
        assert run_cli(*argv, "--workers", 0, "--no_progress") == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--checkpoint", good, "--protocol", "tencrop")
    assert exit_info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_without_a_checkpoint_the_newest_run_is_evaluated(checkpoints, tmp_path, monkeypatch,
                                                          capsys):
    # `python evaluate.py --scale 256` right after `python train.py`: runs/<run>/best.pt.
    folder, _ = checkpoints
    monkeypatch.chdir(tmp_path)
    assert run_cli("--workers", 0, "--no_progress") == 2
    assert "no checkpoint given and no runs/<run>/best.pt found" in capsys.readouterr().err
    for age, name in ((100, "older"), (0, "newer")):
        best = tmp_path / "runs" / name / "best.pt"
        best.parent.mkdir(parents=True)
        best.write_bytes((folder / "net0.pt").read_bytes())
        os.utime(best, (best.stat().st_mtime - age,) * 2)
    assert run_cli("--scale", 32, "--limit", 4, "--workers", 0, "--no_progress") == 0
    assert "evaluating runs/newer/best.pt" in capsys.readouterr().out


@pytest.mark.slow  # two torchrun processes (gloo) against one
def test_distributed_evaluation_counts_every_sample_once(checkpoints, tmp_path):
    import os
    import subprocess
    import sys

    folder, _ = checkpoints
    common = ["--checkpoint", folder / "net0.pt", "--protocol", "dense+multicrop", "--scale",
              32, 40, "--limit", 7, "--workers", 0, "--no_progress"]
    assert run_cli(*common, "--out", tmp_path / "one.json") == 0
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "evaluate.py", *map(str, common), "--out", tmp_path / "two.json"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and two["samples"] == one["samples"] == 7
    for key in ("top1_correct", "top5_correct", "per_class"):
        assert two[key] == one[key]
    confusion = [(tmp_path / f"{n}_confusion.csv").read_text() for n in ("one", "two")]
    assert confusion[0] == confusion[1]


def test_val_split_is_the_one_the_run_held_out(tmp_path):
    # A run with a non-default --seed: evaluate.py must rebuild the same held-out images,
    # not a fresh 10% of the training set (mostly images the network was trained on).
    import train

    run_dir = tmp_path / "seeded"
    assert train.main(["--dataset", "Digits", "--model_version", "A", "--fc_width", "64",
                       "--train_subset", "256", "--batch_size", "32", "--epochs", "1",
                       "--lr", "0.01", "--seed", "7", "--workers", "0", "--device", "cpu",
                       "--wandb", "disabled", "--progress", "false", "--out_dir",
                       str(tmp_path), "--run_name", run_dir.name]) == 0
    epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert run_cli("--checkpoint", run_dir / "best.pt", "--split", "val", "--protocol",
                   "center", "--scale", 32, "--workers", 0, "--no_progress",
                   "--out", tmp_path / "val.json") == 0
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["samples"] == epoch["val_n"] and result["resize"] == "bilinear"  # as trained
    assert result["top1_correct"] == round((1 - epoch["val_top1_err"]) * epoch["val_n"])
