"""Issue 22 item 6: ``--help`` a person can read, read from the tools as a user runs them."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from config import Config, EvalConfig

ROOT = Path(__file__).resolve().parents[1]


def help_of(*tool: str) -> str:
    run = subprocess.run([sys.executable, *tool, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert run.returncode == 0 and not run.stderr, run.stderr
    return run.stdout


def sections(text: str) -> dict[str, list[str]]:
    """Each heading of the help (a line ending in ':' at the margin) and the option lines
    under it, by the flag that starts them."""
    found: dict[str, list[str]] = {}
    heading = None
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][a-z ,]*:", line):
            heading = line[:-1]
            found[heading] = []
        elif heading and (flag := re.match(r"  (-h, )?(--\w+)", line)):
            found[heading].append(flag[2])
    return found


@pytest.mark.parametrize("tool, cls, headings, placed", [
    ("train.py", Config,
     ["options", "data", "model", "optimisation", "schedule", "precision and speed", "run",
      "logging"],
     {"--dataset": "data", "--model_version": "model", "--batch_size": "optimisation",
      "--lr_factor": "schedule", "--warmup_epochs": "schedule", "--deterministic":
      "precision and speed", "--out_dir": "run", "--keep_last_k": "run",
      "--log_interval": "logging", "--wandb": "logging", "--config": "options"}),
    ("evaluate.py", EvalConfig,
     ["options", "what to evaluate", "data", "protocol", "execution"],
     {"--checkpoint": "what to evaluate", "--split": "data", "--scale": "protocol",
      "--precision": "execution", "--progress": "execution"}),
])
def test_options_are_grouped_by_the_config_sections(tool, cls, headings, placed):
    text = help_of(tool)
    found = sections(text)
    assert list(found) == headings
    flags = [flag for group in found.values() for flag in group]
    # Every field once, by its underscore spelling (the aliases are said once, at the end).
    assert sorted(flags) == sorted(["--help", "--config", "--print_config",
                                    *(f"--{f.name}" for f in dataclasses.fields(cls))])
    for flag, heading in placed.items():
        assert flag in found[heading], (flag, heading)
    assert "--batch-size" not in text.replace("--batch_size = --batch-size", "")
    assert "--no-FLAG false" in text


def test_description_and_examples_come_first():
    text = help_of("train.py")
    lines = text.splitlines()
    assert lines[0] == "usage: train.py [--config FILE.yaml] [--OPTION VALUE ...]"
    assert lines[2] == "Train a VGG the way Simonyan & Zisserman (2015, Sec. 3.1) did."
    examples = text.index("    python train.py --model_version D")
    assert examples < text.index("torchrun --nproc_per_node 4") < text.index("\noptions:")
    # The docstring's notes for readers of the code stay out of the help.
    assert "Top to bottom" not in text
    evaluation = help_of("evaluate.py")
    assert evaluation.index("Evaluate trained VGG networks") < evaluation.index(
        "python evaluate.py --checkpoint runs/D/best.pt --scale 256") < evaluation.index(
        "\noptions:")


@pytest.mark.parametrize("tool, expected", [
    ("train.py", ["--train_scale SMIN,SMAX", "--betas BETA1,BETA2", "--lr_find_range FIRST,LAST",
                  "--deterministic [true|false]", "--channels_last [true|false]",
                  "--optimizer {sgd,adamw}", "--epochs N", "--lr X", "--dataset NAME",
                  "--config FILE.yaml"]),
    ("evaluate.py", ["--train_scale S|SMIN,SMAX", "--checkpoint RUN [RUN ...]",
                     "--scale Q [Q ...]", "--flip [true|false]", "--limit N"]),
])
def test_metavars_are_readable(tool, expected):
    text = help_of(tool)
    for invocation in expected:
        assert re.search(rf"^  {re.escape(invocation)}(  |\n)", text, re.MULTILINE), invocation
    # Never a Python type spelled out: TUPLE[INT, INT] | NONE, LIST[STR], BOOL | NONE.
    assert not re.search(r"TUPLE|LIST\[|\| NONE|BOOL", text)
    assert "(default: none)" in text and "(default: None)" not in text


def test_a_config_without_sections_lists_its_options_under_one_heading():
    from vgg.summary import SummaryConfig

    found = sections(help_of("-m", "vgg.summary"))
    assert list(found) == ["options"]
    assert found["options"] == ["--help", "--config", "--print_config",
                                *(f"--{f.name}" for f in dataclasses.fields(SummaryConfig))]
