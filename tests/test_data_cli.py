"""Bad data through the command line (train.py): each is one paragraph naming the file or
what to do, exit code 2, no traceback."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakedata import write_cifar, write_image_folder, write_mnist

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a train.py process per test


def run_train(data_root: Path, dataset: str, *flags: str, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "--dataset", dataset, "--data_root", str(data_root),
         "--epochs", "1", "--device", "cpu", "--workers", "0",
         "--out_dir", str(data_root / "runs"), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled", **(env or {})})


def all_corrupt_image_folder(root: Path) -> str:
    write_image_folder(root, ["a", "b"], per_class=3, splits=("train",))
    for path in (root / "train").rglob("*.png"):
        path.write_bytes(b"not an image")
    return "ImageFolder"


def truncated_cifar(root: Path) -> str:
    write_cifar(root, n_train=20, n_test=5)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:300])
    return "Cifar10"


def mnist_with_a_bad_header(root: Path) -> str:
    write_mnist(root, n_train=20, n_test=5)
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + bytes(20)))
    return "Mnist"


def truncated_mnist(root: Path) -> str:
    write_mnist(root, n_train=20, n_test=5)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-28]))
    return "Mnist"


@pytest.mark.parametrize("make, message", [
    (all_corrupt_image_folder, "none of the 5 sampled images could be decoded"),  # 1 held out
    (truncated_cifar, "data_batch_2 is truncated or damaged"),
    (mnist_with_a_bad_header, "train-labels-idx1-ubyte.gz is not an idx file of 1-d uint8"),
    (truncated_mnist, "train-images-idx3-ubyte.gz holds 15652 bytes of data but its header"),
])
def test_bad_data_files_end_in_one_paragraph_and_exit_code_2(tmp_path, make, message):
    dataset = make(tmp_path)
    result = run_train(tmp_path, dataset)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_a_failed_download_says_what_to_fetch_and_where_not_to_download_again(tmp_path):
    # An unreachable proxy fails every download at once, as being offline does.
    offline = {name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy",
                                                        "HTTP_PROXY", "HTTPS_PROXY")}
    offline.update(no_proxy="", NO_PROXY="")
    result = run_train(tmp_path, "Mnist", "--download", "true", env=offline)
    assert result.returncode == 2, result.stderr
    error = result.stderr[result.stderr.index("train.py: error:"):]
    assert "Traceback" not in result.stderr
    assert "the download failed" in error and "--download" not in error
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in error
    assert f"put them in {tmp_path}/MNIST/raw/" in error
