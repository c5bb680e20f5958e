"""Issue 22 items 5 and 6: every command goes through the one configuration system (the same
flag style, --config YAML, --print_config, one-paragraph errors), and ``--help`` a person can
read, read from the tools as a user runs them."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import predict
from config import Config, EvalConfig, PredictConfig
from vgg import export, plot, reproduce, results
from vgg.data import shards
from vgg.data.shards import ShardsConfig
from vgg.export import ExportConfig
from vgg.plot import PlotConfig
from vgg.reproduce import ReproduceConfig
from vgg.results import ResultsConfig

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
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
    ("predict.py", PredictConfig, ["options", "what to predict", "protocol", "execution"],
     {"--checkpoint": "what to predict", "--top_k": "what to predict", "--flip": "protocol",
      "--precision": "execution", "--out": "execution"}),
    ("-m vgg.export", ExportConfig, ["options", "what to export", "output"],
     {"--out": "output"}),
    ("-m vgg.plot", PlotConfig, ["options", "what to plot", "output"], {"--out": "output"}),
    ("-m vgg.results", ResultsConfig, ["options", "what to report", "output"],
     {"--csv": "output"}),
    ("-m vgg.reproduce", ReproduceConfig, ["options", "the plan", "what to run"],
     {"--plan_dir": "the plan", "--stages": "what to run", "--dry_run": "what to run"}),
    ("-m vgg.data.shards", ShardsConfig, ["options", "what to write", "how"],
     {"--dataset": "what to write", "--workers": "how"}),
])
def test_options_are_grouped_by_the_config_sections(tool, cls, headings, placed):
    text = help_of(*tool.split())
    found = sections(text)
    assert list(found) == headings
    flags = [flag for group in found.values() for flag in group]
    # Every field once, by its underscore spelling (the aliases are said once, at the end);
    # a positional field (predict.py's images) is a bare argument, not a flag.
    assert sorted(flags) == sorted(["--help", "--config", "--print_config",
                                    *(f"--{f.name}" for f in dataclasses.fields(cls)
                                      if not f.metadata.get("positional"))])
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


# ------------------------------------------------------------ issue 22.5: every command

def option_help(text: str) -> dict[str, str]:
    """Each option's help text in ``--help``, by its flag, wrapped lines joined."""
    found: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        if start := re.match(r"  (?:-h, )?(--\w+)", line):
            flag = start[1]
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)  # invocation, help
            found[flag] = parts[1] if len(parts) > 1 else ""
        elif flag and re.match(r" {6,}\S", line):
            found[flag] = f"{found[flag]} {line.strip()}".lstrip()
        else:
            flag = None
    return found


COMMANDS = {"predict.py": ("predict.py", PredictConfig), "vgg.export": ("-m vgg.export",
                                                                       ExportConfig),
            "vgg.plot": ("-m vgg.plot", PlotConfig), "vgg.results": ("-m vgg.results",
                                                                     ResultsConfig),
            "vgg.reproduce": ("-m vgg.reproduce", ReproduceConfig),
            "vgg.data.shards": ("-m vgg.data.shards", ShardsConfig)}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_option_has_help_and_one_default(command):
    """predict.py --help used to print two defaults for some flags (its own text and
    argparse's) and nothing for --precision."""
    tool, cls = COMMANDS[command]
    text = help_of(*tool.split())
    helps = option_help(text)
    for f in dataclasses.fields(cls):
        if f.metadata.get("positional"):
            continue
        entry = helps[f"--{f.name}"]
        assert entry.count("(default:") == 1, entry
        assert len(entry[:entry.index("(default:")].strip()) > 10, (f.name, entry)
    assert all(helps.values()), helps
    # The bare arguments are in the usage line, in order, and explained under their section.
    positional = [f.metadata["metavar"] for f in dataclasses.fields(cls)
                  if f.metadata.get("positional")]
    usage = text.splitlines()[0].split("...]", 1)[1]  # after [--OPTION VALUE ...]
    places = [usage.find(metavar) for metavar in positional]
    assert positional and -1 not in places and places == sorted(places), usage
    for metavar in positional:
        assert re.search(rf"^  {metavar}  +\w", text, re.MULTILINE), metavar


def test_predict_precision_and_device_say_what_they_mean():
    helps = option_help(help_of("predict.py"))
    assert helps["--precision"].startswith("auto = bf16 autocast on a GPU")
    assert helps["--precision"].endswith("(default: auto)")
    assert helps["--device"] == "auto (cuda if available), cpu, cuda, cuda:N (default: auto)"
    # One definition of each: evaluate.py's --device says the same.
    assert option_help(help_of("evaluate.py"))["--device"] == helps["--device"]


MAINS = {"predict.py": predict.main, "vgg.export": export.main, "vgg.plot": plot.main,
         "vgg.results": results.main, "vgg.reproduce": reproduce.main,
         "vgg.data.shards": shards.main}

# Per command: flags (the bare arguments among them), and the configuration they resolve to.
GIVEN = {
    "predict.py": (["a.jpg", "--top_k", "3", "b,c.jpg", "--precision", "bf16", "--flip",
                    "false", "--out", "p.csv"],
                   {"inputs": ["a.jpg", "b,c.jpg"], "checkpoint": None, "top_k": 3,
                    "protocol": "center", "scale": None, "flip": False, "out": "p.csv",
                    "batch_size": 32, "workers": 0, "device": "auto", "precision": "bf16",
                    "progress": True}),
    "vgg.export": (["--out", "exported", "runs/x"], {"source": "runs/x", "out": "exported"}),
    "vgg.plot": (["runs/D", "--out", "cmp.png", "runs/E"],
                 {"runs": ["runs/D", "runs/E"], "out": "cmp.png"}),
    "vgg.results": (["--csv", "r.csv"], {"paths": ["runs"], "csv": "r.csv"}),
    "vgg.reproduce": (["digits_tiny", "--stages", "A", "B,C", "--dry-run", "--launcher",
                       "torchrun --nproc_per_node 2"],
                      {"plan": "digits_tiny", "plan_dir": None, "stages": ["A", "B", "C"],
                       "until": None, "launcher": "torchrun --nproc_per_node 2",
                       "dry_run": True, "status": False}),
    "vgg.data.shards": (["photos", "--workers", "3", "--samples-per-shard", "50", "shards"],
                        {"src": "photos", "dst": "shards", "dataset": "ImageFolder",
                         "workers": 3, "samples_per_shard": 50, "seed": 0}),
}


def printed_config(capsys, command: str, argv: list[str]) -> str:
    assert MAINS[command]([*argv, "--print_config"]) == 0
    captured = capsys.readouterr()
    assert not captured.err
    return captured.out


@pytest.mark.parametrize("command", COMMANDS)
def test_print_config_shows_the_flags_and_reads_back_through_config(command, capsys,
                                                                   tmp_path):
    argv, expected = GIVEN[command]
    text = printed_config(capsys, command, argv)
    assert yaml.safe_load(text) == expected  # every field, in order, bare arguments as given
    assert list(yaml.safe_load(text)) == list(expected)
    (tmp_path / "printed.yaml").write_text(text)
    assert printed_config(capsys, command, ["--config", str(tmp_path / "printed.yaml")]) == text


@pytest.mark.parametrize("command, written, flags, expected", [
    ("predict.py", "inputs: [x.jpg]\ntop_k: 2\nprotocol: DENSE\nflip: true\n",
     ["--top_k", "4"], {"inputs": ["x.jpg"], "top_k": 4, "protocol": "dense", "flip": True}),
    ("predict.py", "inputs: [x.jpg]\nworkers: 2\n", ["y.jpg"],
     {"inputs": ["y.jpg"], "workers": 2}),  # bare arguments replace the file's
    ("vgg.export", "source: runs/a\nout: there\n", [], {"source": "runs/a", "out": "there"}),
    ("vgg.plot", "runs: [r1, r2]\n", ["--out", "c.png"],
     {"runs": ["r1", "r2"], "out": "c.png"}),
    ("vgg.results", "paths: [evals]\ncsv: all.csv\n", [],
     {"paths": ["evals"], "csv": "all.csv"}),
])
def test_a_yaml_file_sets_values_and_flags_override_it(command, written, flags, expected,
                                                       capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(written)
    resolved = yaml.safe_load(printed_config(capsys, command,
                                             ["--config", str(tmp_path / "c.yaml"), *flags]))
    assert {key: resolved[key] for key in expected} == expected


@pytest.mark.parametrize("command, argv, message", [
    ("predict.py", ["a.jpg", "--top_kk", "3"],
     "unknown flag --top_kk (did you mean --top_k?); predict.py --help lists every option"),
    ("predict.py", ["a.jpg", "--top_k"],
     "--top_k: expected one argument; predict.py --help lists every option"),
    ("vgg.export", ["runs/x", "--outt", "d"], "unknown flag --outt (did you mean --out?); "
                                              "python -m vgg.export --help lists every option"),
    ("vgg.plot", ["runs/x", "--ouy", "c.png"], "unknown flag --ouy (did you mean --out?); "
                                               "python -m vgg.plot --help lists every option"),
    ("vgg.results", ["--cvs", "r.csv"], "unknown flag --cvs (did you mean --csv?); "
                                        "python -m vgg.results --help lists every option"),
    ("vgg.reproduce", ["digits_tiny", "--dryrun"], "unknown flag --dryrun (did you mean "
     "--dry_run?); python -m vgg.reproduce --help lists every option"),
    ("vgg.data.shards", ["a", "b", "--worker", "2"], "unknown flag --worker (did you mean "
     "--workers?); python -m vgg.data.shards --help lists every option"),
])
def test_a_bad_flag_is_a_one_paragraph_error(command, argv, message, capsys):
    assert MAINS[command](argv) == 2
    captured = capsys.readouterr()
    program = f"python -m {command}" if command in ("vgg.export", "vgg.data.shards") \
        else command
    assert captured.err == f"{program}: error: {message}\n" and not captured.out


def test_predict_takes_dash_aliases_and_bare_booleans(capsys):
    resolved = yaml.safe_load(printed_config(capsys, "predict.py", [
        "a.jpg", "--top-k", "2", "--batch-size", "8", "--flip", "--no-progress"]))
    assert (resolved["top_k"], resolved["batch_size"]) == (2, 8)
    assert (resolved["flip"], resolved["progress"]) == (True, False)
    resolved = yaml.safe_load(printed_config(capsys, "predict.py", [
        "--no-flip", "a.jpg", "--progress", "false"]))
    assert (resolved["inputs"], resolved["flip"], resolved["progress"]) == (["a.jpg"], False,
                                                                           False)


@pytest.mark.parametrize("command, argv, message", [
    ("predict.py", [], "IMAGE_OR_FOLDER is missing: give it on the command line (predict.py "
                       "[--config FILE.yaml] [--OPTION VALUE ...] IMAGE_OR_FOLDER "
                       "[IMAGE_OR_FOLDER ...]) or as inputs: in --config FILE.yaml"),
    ("vgg.export", ["--out", "d"], "RUN_OR_FILE is missing"),
    ("vgg.plot", [], "RUN is missing"),
    ("vgg.reproduce", ["--dry_run"], "PLAN is missing"),
    ("vgg.data.shards", ["photos"], "DST is missing"),
    ("vgg.export", ["runs/a", "runs/b"], "unexpected command-line arguments ['runs/b']; usage: "
                                         "python -m vgg.export [--config FILE.yaml] "
                                         "[--OPTION VALUE ...] RUN_OR_FILE"),
    # A bare boolean flag takes the next word: before an image it would swallow it.
    ("predict.py", ["--flip", "a.jpg"], "--flip: 'a.jpg' is not true or false; a flag alone "
                                        "must come after IMAGE_OR_FOLDER (or write --flip "
                                        "true)"),
])
def test_bare_arguments_missing_or_extra_are_one_paragraph_errors(command, argv, message,
                                                                  capsys):
    assert MAINS[command](argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "usage: " not in err.split(";")[0]
