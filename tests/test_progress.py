"""Issue 22 item 8: progress as plain lines where there is no terminal (a log file, a pipe),
in evaluate.py and predict.py as in train.py; never tqdm's carriage returns."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.evalnets import save_tiny_checkpoint
from vgg.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_line_each_time_another_tenth_is_done():
    out = io.StringIO()
    with Progress(100, "evaluating", bar=False, file=out) as progress:
        for _ in range(14):
            progress.update(7, top1_err="0.250")
        progress.update(2)
    lines = out.getvalue().splitlines()
    # Batches of 7: the first count at or past each tenth of 100, then the last 2 images.
    assert [int(re.match(r"evaluating: (\d+)/100 img", line)[1]) for line in lines] == [
        14, 21, 35, 42, 56, 63, 70, 84, 91, 100]
    assert lines[0].startswith("evaluating: 14/100 img (14%) | top1_err 0.250 | ")
    assert lines[-1].startswith("evaluating: 100/100 img (100%) | ")
    assert "\r" not in out.getvalue()


def test_other_processes_and_bars_print_no_lines():
    for show, bar in ((False, False), (False, True), (True, True)):
        out = io.StringIO()
        with Progress(10, "x", show=show, bar=bar, file=out) as progress:
            progress.update(10)
        assert out.getvalue() == ""


def run(*argv: str) -> subprocess.CompletedProcess:
    """A tool as a cluster job runs it: stdout and stderr pipes, no terminal. Read as bytes:
    text mode's universal newlines would turn a bar's carriage returns into newlines."""
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True,
                          timeout=600, env={**os.environ, "WANDB_MODE": "disabled"})
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def test_evaluate_without_a_terminal_prints_lines_not_a_bar(tmp_path):
    save_tiny_checkpoint(tmp_path / "net.pt")
    done = run("evaluate.py", "--checkpoint", str(tmp_path / "net.pt"), "--protocol", "center",
               "--scale", "32", "--limit", "20", "--batch_size", "4", "--workers", "0",
               "--out", str(tmp_path / "eval.json"))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    counts = re.findall(r"^evaluating: (\d+)/20 img \(\d+%\) \| top1_err [\d.]+ \| ",
                        done.stdout, re.MULTILINE)
    assert list(map(int, counts)) == [4, 8, 12, 16, 20]  # batches of 4: past a tenth each


def test_predict_without_a_terminal_prints_lines_on_stderr(tmp_path):
    save_tiny_checkpoint(tmp_path / "net.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(photos / f"{i}.png")
    done = run("predict.py", str(photos), "--checkpoint", str(tmp_path / "net.pt"),
               "--batch_size", "3")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    counts = re.findall(r"^predicting: (\d+)/6 img \(\d+%\)", done.stderr, re.MULTILINE)
    assert list(map(int, counts)) == [3, 6]
    assert len(done.stdout.splitlines()) == 6  # stdout: the predictions only
