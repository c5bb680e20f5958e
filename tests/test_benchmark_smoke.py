"""Every benchmark entry point runs, at tiny sizes on the CPU, and prints its table; the
FLOP bound behind the MFU column is the issue's 92.8 GFLOP for config D at 224."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks import (
    before_after,
    checkpoint_save,
    cifar_speed,
    data_pipeline,
    evaluate_throughput,
    first_step,
    gpu_data,
    index_startup,
    photo_folder,
    shards,
    train_memory,
    train_throughput,
)
from benchmarks.steps import training_flops_per_image

ROOT = Path(__file__).parents[1]
MODULES = ["train_throughput", "train_memory", "gpu_data", "cifar_speed", "data_pipeline",
           "evaluate_throughput", "distributed_smoke", "photo_folder", "before_after",
           "checkpoint_save", "data_setup", "index_startup", "shards", "first_step"]


def test_the_bound_is_three_times_the_forward_flops():
    """D at 224: 15.47 G multiply-accumulates forward (the paper's network), 2 FLOP each,
    x3 for the two backward products: 92.8 GFLOP per training image."""
    assert training_flops_per_image("D", 224, 1000) == pytest.approx(92.8e9, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_each_benchmark_runs_as_a_module_from_the_repository_root(module):
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def table_row(output: str, name: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(name))
    return line[len(name):].split()


@pytest.mark.slow
def test_throughput_prints_mfu_and_the_profile(capsys):
    train_throughput.main(["--device", "cpu", "--image_size", "32", "--batch_size", "2",
                           "--num_classes", "10", "--steps", "1", "--warmup", "1",
                           "--no_compile", "--peak_tflops", "2", "--profile",
                           "--profile_rows", "12"])  # a loaded machine reorders the top few
    output = capsys.readouterr().out
    row = table_row(output, "ours")
    speed, mfu = row[0], next(field for field in row if field.endswith("%"))  # after spreads
    flops = training_flops_per_image("A", 32, 10)
    assert float(mfu.rstrip("%")) / 100 == pytest.approx(float(speed) * flops / 2e12,
                                                         rel=0.02, abs=1e-3)
    assert "profile of 'ours'" in output
    assert "convolution" in output.split("profile of 'ours'")[1]


def test_memory_table_on_cpu(capsys):
    train_memory.main(["--model_version", "A", "--image_size", "32"])
    output = capsys.readouterr().out
    assert re.search(r"^bf16\s+on \(stage [\d/]+\)", output, re.MULTILINE)


@pytest.mark.slow
def test_gpu_data_pipeline_and_fed_training(capsys):
    gpu_data.main(["--device", "cpu", "--shape", "60", "80", "--images", "4",
                   "--batch_size", "2", "--threads", "1", "--num_classes", "10",
                   "--steps", "1", "--warmup", "1", "--repeats", "1"])
    output = capsys.readouterr().out
    for stage in ("decode (decode_jpeg)", "augment (decoded images)",
                  "decode + augment (JpegLoader)", "training fed by JpegLoader"):
        assert float(table_row(output, stage)[0]) > 0
    assert table_row(output, "training, synthetic batch")[1] == "1.00x"


@pytest.mark.slow
@pytest.mark.parametrize("subset", [[], ["--train_subset", "12", "--val_subset", "1"]],
                         ids=["all", "subset"])
def test_cifar_speed_trains_from_the_jpeg_zip(tmp_path, capsys, subset):
    archive = tmp_path / "cifar.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(20):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            zipped.writestr(f"train/{('cat', 'dog')[i % 2]}/{i:04d}.jpg",
                            cv2.imencode(".jpg", image)[1].tobytes())
    cifar_speed.main(["--zip", str(archive), "--device", "cpu", "--model_version", "A",
                      "--fc_width", "16", "--epochs", "1", "--batch_size", "6", *subset])
    output = capsys.readouterr().out
    held_out = 1 if subset else 2
    assert f"{12 if subset else 18} training images" in output
    assert f"{held_out} held out" in output
    loss, top1, seconds = table_row(output, "    1")
    assert float(top1.rstrip("%")) * held_out / 100 in (0, 1, 2)  # a whole number right


@pytest.mark.slow
def test_data_pipeline_and_evaluation_benchmarks(capsys):
    threads = torch.get_num_threads()
    data_pipeline.main(["--images", "2", "--repeats", "1", "--size", "32", "--scale", "37",
                        "48"])
    # Timed on one core, but the calling process keeps its threads: a changed count would
    # change the summation order of later computations (a resume's bit-identity test).
    assert torch.get_num_threads() == threads
    evaluate_throughput.main(["--device", "cpu", "--images", "1", "--repeats", "1",
                              "--protocols", "center"])
    output = capsys.readouterr().out
    assert "ours (OpenCV)" in output and "| center |" in output


@pytest.mark.slow
@pytest.mark.parametrize("probe", [["listing", "--files", "60", "--classes", "3"],
                                   ["fingerprint", "--files", "60", "--classes", "3"],
                                   ["seeding", "--images", "64"],
                                   ["device_augment", "--images", "2"]])
def test_each_before_after_probe_runs_in_both_checkouts(capsys, probe):
    """Against this checkout on both sides, which runs every probe the same way."""
    before_after.main(["--before", str(ROOT), "--rounds", "1", *probe])
    output = capsys.readouterr().out
    assert re.search(r"^round 1: before [\d.]+ \S+, after [\d.]+", output, re.MULTILINE)
    assert "speed-up after / before, per round: median" in output


@pytest.mark.slow
def test_index_startup_compares_a_first_start_and_a_restart_with_torchvision(capsys):
    index_startup.main(["--files", "40", "--classes", "4"])  # a restart that lists raises
    output = capsys.readouterr().out
    assert "40 files in 4 class folders (hard links)" in output
    for row in ("| seconds to the dataset and its sample 0 |", "| main process RSS growth |",
                "| forked worker's private growth after reading every path |"):
        cells = next(line for line in output.splitlines() if line.startswith(row)).split("|")
        assert len(cells) == 8 and cells[-2].strip().endswith("x")  # 3 figures, 2 ratios


@pytest.mark.slow
def test_shards_benchmark_compares_the_writer_with_tar_and_shard_with_file_loading(capsys):
    pytest.importorskip("webdataset")
    shards.main(["--files", "40", "--classes", "4", "--workers", "2"])
    output = capsys.readouterr().out
    for row in ("| shard writer, 2 process(es) |", "| reference: tarfile of the same files",
                "| loading files, workers 0 |", "| loading shards, workers 2 |"):
        assert any(line.startswith(row) for line in output.splitlines()), output
    assert re.search(r"shards / files, workers 2: \d+\.\d\dx", output)


@pytest.mark.slow
def test_first_step_times_train_py_and_torchvisions_recipe_to_their_first_step(capsys):
    # ImageNet's 1000 classes (a checkpoint of fewer is not resumed); a restart that lists
    # raises
    first_step.main(["--files", "1000", "--val", "1000", "--workers", "1", "--batch", "4"])
    output = capsys.readouterr().out
    assert "1000 + 1000 files in 1000 class folders (hard links)" in output
    for row in ("| seconds from launch to the first training step |",
                "| main process peak RSS |", "| loader worker peak RSS (largest worker) |"):
        cells = next(line for line in output.splitlines() if line.startswith(row)).split("|")
        assert len(cells) == 8 and cells[-2].strip().endswith("x")  # 3 figures, 2 ratios
    runs = [line for line in output.splitlines() if line.startswith(("torchvision: ", "ours, "))]
    assert len(runs) == 3 and all('"workers": ' in line for line in runs)


@pytest.mark.slow
def test_checkpoint_save_times_the_four_ways(capsys, tmp_path):
    checkpoint_save.main(["--rounds", "1", "--model_version", "A", "--image_size", "32",
                          "--dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert all(way in output for way in checkpoint_save.WAYS)


@pytest.mark.slow
def test_distributed_smoke_under_torchrun_with_two_cpu_processes():
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", "-m", "benchmarks.distributed_smoke", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend gloo, 2 process(es)" in result.stdout
    assert "CPU tally all-reduced: [2.0, 1.0]; validation counted 15" in result.stdout
    assert result.stdout.rstrip().endswith("distributed smoke: OK")


@pytest.mark.slow
def test_the_gpu_session_needs_neither_wandb_nor_albumentations():
    """A GPU machine may lack both: everything benchmarks/gpu_session.sh runs imports
    without them (imports of a name set to None in sys.modules fail, as if uninstalled)."""
    modules = [f"benchmarks.{m}" for m in MODULES] + ["train", "evaluate", "vgg.data.gpu",
                                                       "vgg.data.resident"]
    code = ("import sys, importlib\nsys.modules['wandb'] = sys.modules['albumentations'] = None\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\nprint('imported')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "imported"


def test_photo_folder_holds_the_held_out_images_of_the_classes(tmp_path, capsys):
    from tests.fakedata import write_cifar
    from vgg.data.splits import split_images
    from vgg.errors import UserError

    write_cifar(tmp_path, n_train=400, n_test=10)
    out = tmp_path / "folder"
    assert photo_folder.main(["--data_root", str(tmp_path), "--out", str(out), "--classes",
                              "class3", "class5", "--per_class", "2", "1", "1"]) == 0
    assert f"{out}: 4 train, 2 val, 2 test" in capsys.readouterr().out
    held_out = split_images("Cifar10", "val", tmp_path)
    for split, per_class in (("train", 2), ("val", 1), ("test", 1)):  # read as a user's
        assert len(split_images("ImageFolder", split, out)) == 2 * per_class
    for path in sorted(out.glob("*/*/*.jpg")):
        index = int(path.stem)  # the image's index in the held-out split
        assert held_out.classes[held_out.labels[index]] == path.parent.name
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(int)
        assert np.abs(image - held_out.images[index]).mean() < 3  # JPEG, quality 95
    with pytest.raises(UserError, match="--classes horse: CIFAR-10 has class0"):
        photo_folder.main(["--data_root", str(tmp_path), "--out", str(out), "--classes", "horse"])
