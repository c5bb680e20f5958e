"""evaluate.py end to end: real checkpoint files, real datasets, the results JSON and CSV
checked against the networks' own posteriors computed independently."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.evalnets import save_tiny_checkpoint
from vgg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vgg.evaluation import Evaluator, Tally, sample_indices
from vgg.networks import network_from_torchvision


def run_cli(*argv):
    import evaluate

    return evaluate.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    models = [save_tiny_checkpoint(folder / f"net{i}.pt", seed=i) for i in range(2)]
    return folder, models


def digits_inputs(scales, limit):
    """The test images as dataset_class delivers them, independently of evaluate.py (the
    --limit sample: sample_indices, checked in test_evaluation.py)."""
    import dataset_class

    spec = dataset_class.dataset_spec("Digits")
    per_scale = [dataset_class.build_dataset(
        "Digits", "test", "unused", dataset_class.eval_transform(spec, 32, scale=q, crop=False))
        for q in scales]
    chosen = sample_indices(len(per_scale[0]), limit)
    images = [[per_scale[s][i][0] for s in range(len(scales))] for i in chosen]
    labels = torch.tensor([per_scale[0][i][1] for i in chosen])
    return images, labels


@pytest.mark.parametrize("protocol", ["center", "dense", "multicrop", "dense+multicrop"])
def test_every_protocol_end_to_end(checkpoints, tmp_path, protocol, capsys):
    folder, (model, _) = checkpoints
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", folder / "net0.pt", "--protocol", protocol, "--scale",
                   "multi", "--limit", 4, "--workers", 0, "--out", out, "--progress", "false") == 0
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
    # the confusion matrix as a picture beside its CSV, and the most-confused pairs printed
    picture = np.asarray(Image.open(tmp_path / "r_confusion.png").convert("L"))
    assert picture.min() < 128 < picture.max()  # not blank
    # titled with what was evaluated and how, and the error the results JSON holds
    assert Image.open(tmp_path / "r_confusion.png").text["Title"] == (
        f"{folder.name}/net0.pt | test split | {protocol} | Q=32,40,48 | top-1 error "
        f"{100 * results['top1_error']:.2f}%")
    assert "most confused (true -> predicted: images):" in printed


def test_a_checkpoint_with_an_average_is_evaluated_with_it_unless_asked_otherwise(tmp_path,
                                                                                   capsys):
    # a train.py --ema checkpoint: seed 0's network as its weights, seed 1's as their average
    raw = save_tiny_checkpoint(tmp_path / "best.pt", seed=0)
    averaged = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    checkpoint = load_checkpoint(tmp_path / "best.pt")
    save_checkpoint(checkpoint | {"model_ema": averaged.state_dict(), "ema_updates": 5},
                    tmp_path / "best.pt")
    images, labels = digits_inputs([40], 20)
    confusions = []  # the two networks' predictions, computed independently: they differ
    for model in (raw, averaged):
        tally = Tally(10)
        tally.update(Evaluator([model], "center", flip=False).posteriors(images), labels)
        confusions.append(tally.confusion.tolist())
    assert confusions[0] != confusions[1]
    for weights, model in (("auto", averaged), ("ema", averaged), ("raw", raw)):
        assert run_cli("--checkpoint", tmp_path / "best.pt", "--weights", weights,
                       "--protocol", "center", "--limit", 20, "--workers", 0,
                       "--progress", "false") == 0
        name = "best-ema" if model is averaged else "best"  # neither overwrites the other
        results = json.loads((tmp_path / f"eval_{name}_test_center_40_sample20-seed0.json")
                             .read_text())
        assert results["networks"][0]["weights"] == ("ema" if model is averaged else "raw")
        confusion = [[int(v) for v in line.split(",")[1:]] for line in
                     open(results["confusion_matrix"]).read().splitlines()[1:]]
        assert confusion == confusions[model is averaged], weights
    assert "its average of the weights (trained with --ema" in capsys.readouterr().out
    assert run_cli("--checkpoint", tmp_path / "other.pt", "--weights", "ema") == 2
    assert "holds no average of the weights" in capsys.readouterr().err


def test_ensemble_averages_posteriors(checkpoints, tmp_path):
    folder, models = checkpoints
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", folder / "net0.pt", folder / "net1.pt", "--protocol",
                   "dense", "--scale", 32, 40, "--flip", "true", "--limit", 4, "--workers", 0,
                   "--out", out, "--progress", "false") == 0
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
        assert run_cli(*argv, "--workers", 0, "--progress", "false") == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert run_cli("--checkpoint", good, "--protocol", "tencrop") == 2
    assert "--protocol tencrop: unknown protocol" in capsys.readouterr().err


def test_without_a_checkpoint_the_newest_run_is_evaluated(checkpoints, tmp_path, monkeypatch,
                                                          capsys):
    # `python evaluate.py --scale 256` right after `python train.py`: runs/<run>/best.pt.
    folder, _ = checkpoints
    monkeypatch.chdir(tmp_path)
    assert run_cli("--workers", 0, "--progress", "false") == 2
    assert "no checkpoint given and no runs/<run>/best.pt found" in capsys.readouterr().err
    for age, name in ((100, "older"), (0, "newer")):
        best = tmp_path / "runs" / name / "best.pt"
        best.parent.mkdir(parents=True)
        best.write_bytes((folder / "net0.pt").read_bytes())
        os.utime(best, (best.stat().st_mtime - age,) * 2)
    assert run_cli("--scale", 32, "--limit", 4, "--workers", 0, "--progress", "false") == 0
    assert "evaluating runs/newer/best.pt" in capsys.readouterr().out
    # A run directory given by name means its best.pt, as for predict.py and --init_from.
    assert run_cli("--checkpoint", "runs/older", "--scale", 32, "--limit", 4, "--workers", 0,
                   "--progress", "false") == 0
    assert "runs/older/eval_best_test_dense_32" in capsys.readouterr().out


@pytest.mark.slow  # two torchrun processes (gloo) against one
def test_distributed_evaluation_counts_every_sample_once(checkpoints, tmp_path):
    import os
    import subprocess
    import sys

    folder, _ = checkpoints
    common = ["--checkpoint", folder / "net0.pt", "--protocol", "dense+multicrop", "--scale",
              32, 40, "--limit", 7, "--workers", 0, "--progress", "false"]
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
                   "center", "--scale", 32, "--workers", 0, "--progress", "false",
                   "--out", tmp_path / "val.json") == 0
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["samples"] == epoch["val_n"] and result["resize"] == "bilinear"  # as trained
    assert result["top1_correct"] == round((1 - epoch["val_top1_err"]) * epoch["val_n"])


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
                   "--progress", "false") == 0
    results = json.loads(out.read_text())
    assert results["scales"] == [256] and results["samples"] == 9
    assert results["resize"] == "PIL antialiased bilinear"  # as torchvision trained them
    assert results["top1_correct"] == tally.summary()["top1_correct"]
    assert "top5_correct" not in results  # issue 14: 3 classes, top-5 is always right
    assert results["per_class"] == tally.summary()["per_class"]




# --------------------------------------------------------------------------- bad input (12)

@pytest.mark.parametrize("extra, needle", [
    (["--limit", 0], "--limit 0"),
    (["--workers", -1], "--workers -1"),
    (["--device", "tpu"], "--device tpu"),
    (["--scale", "huge"], "--scale takes integers"),
    (["--train_scale", "48,32"], "--train_scale 48,32"),
    (["--flip", "maybe"], "--flip: expected bool"),
])
def test_bad_options_are_one_paragraph_errors(checkpoints, extra, needle, capsys):
    folder, _ = checkpoints
    assert run_cli("--checkpoint", folder / "net0.pt", "--workers", 0, *extra) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_unwritable_results_fail_before_evaluating(checkpoints, tmp_path, capsys):
    folder, _ = checkpoints
    common = ["--checkpoint", folder / "net0.pt", "--limit", 2, "--workers", 0]
    assert run_cli(*common, "--out", tmp_path) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert run_cli(*common, "--out", blocker / "r.json") == 2  # no folder can be made there
    captured = capsys.readouterr()
    assert "is a file" in captured.err and "top-1" not in captured.out  # nothing evaluated


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_folder_fails_before_evaluating(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    save_tiny_checkpoint(folder / "net.pt")
    folder.chmod(0o555)
    try:
        assert run_cli("--checkpoint", folder / "net.pt", "--limit", 2, "--workers", 0) == 2
    finally:
        folder.chmod(0o755)
    captured = capsys.readouterr()
    assert "--out" in captured.err and "top-1" not in captured.out


def test_checkpoint_with_bad_model_args_is_a_clear_error(tmp_path, capsys):
    from vgg.checkpoint import save_checkpoint

    path = tmp_path / "bad.pt"
    save_checkpoint({"model": {}, "model_args": {"version": "Z"}, "config": {}}, path)
    assert run_cli("--checkpoint", path, "--workers", 0) == 2
    err = capsys.readouterr().err
    assert "model_args" in err and "Traceback" not in err


def test_dataset_names_are_case_insensitive(checkpoints, tmp_path):
    folder, _ = checkpoints
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", folder / "net0.pt", "--dataset", "DIGITS", "--limit", 2,
                   "--scale", 32, "--workers", 0, "--progress", "false", "--out", out) == 0
    assert json.loads(out.read_text())["dataset"] == "Digits"


# --------------------------------------------------------------------------- fidelity (11)

def test_precision_is_fp32_by_default_and_recorded_as_used(checkpoints, tmp_path):
    folder, _ = checkpoints
    common = ["--checkpoint", folder / "net0.pt", "--limit", 2, "--scale", 32, "--workers", 0,
              "--progress", "false"]
    for extra, used in (([], "fp32"), (["--precision", "auto"], "fp32"),  # auto: CPU -> fp32
                        (["--precision", "bf16"], "bf16")):
        out = tmp_path / f"{used}{len(extra)}.json"
        assert run_cli(*common, *extra, "--out", out) == 0
        results = json.loads(out.read_text())
        assert results["precision"] == used


def test_a_scale_far_outside_the_papers_is_warned(checkpoints, tmp_path, capsys):
    folder, _ = checkpoints  # trained at S = [32; 48]: the paper's Q would be 40
    assert run_cli("--checkpoint", folder / "net0.pt", "--scale", 256, "--protocol", "center",
                   "--limit", 1, "--workers", 0, "--progress", "false",
                   "--out", tmp_path / "r.json") == 0
    err = capsys.readouterr().err
    assert "Q=256 is far outside" in err and "40 (--scale single)" in err


def test_print_config_is_the_resolved_evaluation_config(checkpoints, capsys):
    import yaml

    folder, _ = checkpoints
    assert run_cli("--checkpoint", f"{folder / 'net0.pt'},{folder / 'net1.pt'}",
                   "--scale", "32,40", "--flip", "false", "--print_config") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["checkpoint"] == [str(folder / "net0.pt"), str(folder / "net1.pt")]
    assert printed["scale"] == [32, 40] and printed["flip"] is False
    assert printed["precision"] == "fp32" and printed["protocol"] == "dense"


# --------------------------------------------------------------------------- own data (14)

def image_folder(root, classes=("a", "b", "c"), per_class=4, splits=("train", "test")):
    from tests.fakedata import write_image_folder

    write_image_folder(root, classes, per_class, size=(32, 32), splits=splits)
    return root


def test_limit_is_a_seeded_sample_across_classes(tmp_path, capsys):
    root = image_folder(tmp_path / "photos", per_class=10)
    save_tiny_checkpoint(tmp_path / "net.pt", num_classes=3, in_channels=3,
                         dataset="ImageFolder", train_scale=(32, 32),
                         preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3})
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", tmp_path / "net.pt", "--data_root", root, "--limit", 6,
                   "--protocol", "center", "--workers", 0, "--progress", "false",
                   "--out", out) == 0
    results = json.loads(out.read_text())
    assert results["sample"] == {"images": 6, "of": 30, "seed": 0}
    assert sum(results["per_class"]["count"]) == 6
    assert sum(1 for count in results["per_class"]["count"] if count) >= 2  # not one class
    assert "random sample of 6 of the 30 test images" in capsys.readouterr().out


def test_result_files_never_overwrite_each_other(checkpoints, tmp_path):
    folder, _ = checkpoints
    for name in ("net0.pt", "net1.pt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    common = ["--scale", 32, "--workers", 0, "--progress", "false"]
    runs = [["--checkpoint", tmp_path / "net0.pt", "--limit", 3],
            ["--checkpoint", tmp_path / "net0.pt", tmp_path / "net1.pt", "--limit", 3],
            ["--checkpoint", tmp_path / "net0.pt", "--limit", 5]]
    for argv in runs:
        assert run_cli(*argv, *common) == 0
    written = sorted(p.name for p in tmp_path.glob("eval_*.json"))
    assert len(written) == 3, written
    samples = sorted(json.loads((tmp_path / n).read_text())["samples"] for n in written)
    assert samples == [3, 3, 5]


def test_multi_scale_for_a_network_trained_small(tmp_path, capsys):
    # Issue 14: a 64-pixel network trained at S = 73 asked for Q = 41 and failed.
    save_tiny_checkpoint(tmp_path / "net.pt", image_size=64, train_scale=(73, 73))
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", tmp_path / "net.pt", "--scale", "multi", "--protocol",
                   "center", "--limit", 2, "--workers", 0, "--progress", "false",
                   "--out", out) == 0
    assert json.loads(out.read_text())["scales"] == [64, 73, 82]
    assert "test scales Q: 64,73,82 (--scale multi: S-9, S, S+9 for S=73" in \
        capsys.readouterr().out


def test_checkpoint_preprocessing_evaluates_moved_data_without_measuring(tmp_path, capsys):
    """Issue 11.11 and 14: the checkpoint's own mean/std and classes, a data folder with no
    train/ part (the training data moved); and no top-5 for 3 classes."""
    import cv2

    root = image_folder(tmp_path / "moved", per_class=3, splits=("test",))
    (root / "train").mkdir()  # the training images are not here: nothing to measure
    record = {"dataset": "ImageFolder", "classes": ["a", "b", "c"], "in_channels": 3,
              "image_size": 32, "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3],
              "train_scale": [32, 32], "resize": "bilinear"}
    model = save_tiny_checkpoint(tmp_path / "net.pt", num_classes=3, in_channels=3,
                                 dataset="ImageFolder", train_scale=None, preprocessing=record)
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", tmp_path / "net.pt", "--data_root", root, "--protocol",
                   "center", "--workers", 0, "--progress", "false", "--out", out) == 0
    results = json.loads(out.read_text())
    assert results["scales"] == [32] and results["networks"][0]["mean"] == [0.3, 0.4, 0.5]
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" not in printed and "top5_error" not in results
    # by hand: (pixel / 255 - mean) / std of the 32x32 files, no rescale at Q = 32
    files = sorted((root / "test").glob("*/*.png"))
    pixels = np.stack([cv2.imread(str(f), cv2.IMREAD_COLOR_RGB) for f in files])
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255
         - torch.tensor(record["mean"])[:, None, None]) / torch.tensor(record["std"])[:, None, None]
    labels = torch.tensor(["abc".index(f.parent.name) for f in files])
    with torch.no_grad():
        correct = int((model(x.float()).argmax(1) == labels).sum())
    assert results["top1_correct"] == correct and results["samples"] == 9
    save_tiny_checkpoint(tmp_path / "other.pt", num_classes=3, in_channels=3,
                         dataset="ImageFolder", preprocessing=dict(record, classes=["x", "b", "c"]))
    assert run_cli("--checkpoint", tmp_path / "other.pt", "--data_root", root,
                   "--workers", 0) == 2
    assert "a that the network was not trained on" in capsys.readouterr().err


def test_a_folder_without_test_images_offers_the_val_split(tmp_path, capsys):
    # Issue 14: train/ + val/ and no test/ ended in a raw "[Errno 2] ... '<root>/test'".
    root = image_folder(tmp_path / "photos", per_class=2, splits=("train", "val"))
    save_tiny_checkpoint(tmp_path / "net.pt", num_classes=3, in_channels=3,
                         dataset="ImageFolder", train_scale=(32, 32),
                         preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3})
    common = ["--checkpoint", tmp_path / "net.pt", "--data_root", root, "--workers", 0,
              "--progress", "false"]
    assert run_cli(*common) == 2
    err = capsys.readouterr().err
    assert "has no test split" in err and "--split val" in err and "optimistic" in err
    assert run_cli(*common, "--split", "val") == 0
    assert "their error is optimistic" in capsys.readouterr().out
