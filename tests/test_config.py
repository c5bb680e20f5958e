"""Configuration: defaults < YAML < flags, every field a flag, clear errors, presets valid."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import dataset_class
from config import Config, EvalConfig
from vgg import configuration
from vgg.configuration import ConfigError, parse_args
from vgg.model import VERSIONS

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers():
    c = Config()
    assert (c.dataset, c.data_root, c.model_version) == ("ImageNet", "data", "D")
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.epochs) == (256, 1e-2, 0.9, 5e-4, 74)
    assert (c.schedule, c.lr_factor, c.max_lr_drops, c.dropout, c.init) == (
        "plateau", 0.1, 3, 0.5, "xavier")


def test_every_field_is_a_flag_and_has_a_comment():
    parser = configuration.build_parser(Config)
    flags = {a.dest for a in parser._actions}
    names = {f.name for f in dataclasses.fields(Config)}
    assert names <= flags
    comments = configuration.field_comments(Config)
    assert set(comments) == names and all(comments.values())


def test_precedence_defaults_yaml_flags(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("lr: 0.05\nepochs: 3\ntrain_scale: [256, 512]\n")
    cfg, _ = parse_args(Config, ["--config", str(path), "--epochs", "5", "--nesterov", "true",
                                 "--grad_clip", "1e-1", "--run_name", "123"])
    assert cfg.lr == 0.05 and cfg.epochs == 5 and cfg.nesterov is True
    assert cfg.train_scale == (256, 512) and cfg.grad_clip == 0.1 and cfg.run_name == "123"
    cfg, _ = parse_args(Config, ["--train_scale", "256,512", "--image_size", "none"])
    assert cfg.train_scale == (256, 512) and cfg.image_size is None


@pytest.mark.parametrize("argv, needle", [
    (["--lrr", "0.1"], "did you mean --lr?"),
    (["--epochs", "ten"], "epochs: expected int"),
    (["--nesterov", "maybe"], "nesterov: expected bool"),
    (["--train_scale", "256"], "train_scale"),
    (["--model_version", "F"], "valid choices: " + ", ".join(VERSIONS)),
    (["--dataset", "SVHN"], "Digits"),
    (["--precision", "fp8"], "auto, bf16, fp16, fp32"),
    (["--batch_size", "256", "--micro_batch_size", "100"], "must divide"),
    (["--init", "from_A"], "init_from_A"),
    (["--weights", "VGG16_Weights.IMAGENET1K_V2"], "did you mean VGG16_Weights.IMAGENET1K_V1?"),
    (["--weights", "resnet50"], "choose one of VGG11_Weights.IMAGENET1K_V1, VGG11_BN_Weights"),
    (["--weights", "VGG16_Weights.IMAGENET1K_V1", "--init_from", "runs/a"], "not both"),
    (["--weights", "VGG11_Weights.IMAGENET1K_V1"], "--model_version A --batch_norm false"),
    (["--weights", "VGG16_BN_Weights.IMAGENET1K_V1"], "--model_version D --batch_norm true"),
    (["--weights", "VGG16_Weights.IMAGENET1K_V1", "--width", "0.5"],
     "--batch_norm false --width 1 (this config: --model_version D --batch_norm false --width "
     "0.5)"),
    (["--width", "0"], "--width must be a positive channel multiplier"),
    (["--weights", "VGG16_Weights.IMAGENET1K_V1", "--init", "from_A", "--init_from_A", "a.pt"],
     "combined with --init from_A"),
    (["--freeze", "features"], "give --weights or --init_from too"),
])
def test_bad_values_are_errors_that_list_what_is_valid(argv, needle):
    with pytest.raises(ConfigError, match=None) as info:
        parse_args(Config, argv)
    assert needle in str(info.value)


@pytest.mark.parametrize("source", [["--weights", "VGG16_Weights.IMAGENET1K_V1"],
                                    ["--weights", "VGG16_Weights.DEFAULT"],
                                    ["--init_from", "runs/a"]], ids=" ".join)
def test_fine_tuning_options_take_either_source(source):
    cfg, _ = parse_args(Config, [*source, "--freeze", "features",
                                 "--pretrained_lr_multiplier", "0.1"])
    assert cfg.pretrained_from == source[1]
    assert (cfg.freeze, cfg.pretrained_lr_multiplier) == ("features", 0.1)


def test_yaml_unknown_key_and_wrong_type(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="Valid keys: dataset"):
        parse_args(Config, ["--config", str(path)])
    path.write_text("epochs: [1, 2]\n")
    with pytest.raises(ConfigError, match="epochs: expected int"):
        parse_args(Config, ["--config", str(path)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(Config, ["--config", str(tmp_path / "missing.yaml")])


def test_saved_config_round_trips(tmp_path):
    cfg, _ = parse_args(Config, ["--train_scale", "256,512", "--lr", "0.001", "--wandb",
                                 "disabled"])
    configuration.save_yaml(configuration.to_dict(cfg), tmp_path / "config.yaml")
    again, _ = parse_args(Config, ["--config", str(tmp_path / "config.yaml")])
    assert again == cfg


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_presets_are_valid(preset):
    cfg, _ = parse_args(Config, ["--config", str(preset)])
    assert cfg.dataset in dataset_class.DATASETS


def test_paper_presets():
    def load(name):
        return parse_args(Config, ["--config", str(ROOT / "configs" / name)])[0]
    for version in "ABCDE":
        c = load(f"{version}_S256.yaml")
        assert (c.model_version, c.train_scale, c.lr, c.dataset) == (
            version, (256, 256), 1e-2, "ImageNet")
    for version in "BCDE":
        c = load(f"{version}_S384.yaml")
        assert c.train_scale == (384, 384) and c.lr == 1e-3 and c.init_from
    for version in "CDE":
        c = load(f"{version}_S256-512.yaml")
        assert c.train_scale == (256, 512) and "S384" in c.init_from
    assert load("A_lrn_S256.yaml").model_version == "A_lrn"


def test_finetune_preset_names_torchvision_weights():
    cfg, _ = parse_args(Config, ["--config", str(ROOT / "configs" / "finetune_imagefolder.yaml")])
    assert (cfg.weights, cfg.init_from, cfg.freeze) == ("VGG16_Weights.IMAGENET1K_V1", None,
                                                        "features")


def test_cli_print_config_and_error_exit_code():
    run = subprocess.run([sys.executable, "train.py", "--print_config", "--lr", "0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    printed = yaml.safe_load(run.stdout)
    assert printed["lr"] == 0.5 and printed["model_version"] == "D"
    run = subprocess.run([sys.executable, "train.py", "--optimiser", "sgd"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "did you mean --optimizer?" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("argv, expected", [
    (["--deterministic"], {"deterministic": True}),
    (["--deterministic", "true", "--no-deterministic"], {"deterministic": False}),
    (["--deterministic", "false"], {"deterministic": False}),
    (["--nesterov", "--lr", "0.5"], {"nesterov": True, "lr": 0.5}),  # bare before a flag
    (["--no-color-shift", "--batch-size", "8"], {"color_shift": False, "batch_size": 8}),
    (["--no-color_shift", "--train-scale", "256", "512"],
     {"color_shift": False, "train_scale": [256, 512]}),
    (["--channels-last"], {"channels_last": True}),  # an optional boolean too
    (["--no-channels-last"], {"channels_last": False}),
    (["--channels_last", "none"], {"channels_last": None}),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bare_booleans_no_flags_and_dash_aliases(argv, expected, capsys):
    """Issue 22 item 7, through train.py's own main: the YAML it prints is the config."""
    import train

    assert train.main(["--print-config", *argv]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {key: printed[key] for key in expected} == expected
    assert printed["deterministic"] is expected.get("deterministic", False)  # default kept


def test_eval_config_takes_the_same_boolean_and_dash_spellings():
    cfg, _ = parse_args(EvalConfig, ["--no-flip", "--no-progress", "--batch-size", "4"])
    assert (cfg.flip, cfg.progress, cfg.batch_size) == (False, False, 4)
    assert parse_args(EvalConfig, ["--flip"])[0].flip is True


@pytest.mark.parametrize("argv, needle", [
    (["--batch-szie", "8"], "unknown flag --batch-szie (did you mean --batch-size?)"),
    (["--optimiser=sgd"], "unknown flag --optimiser (did you mean --optimizer?)"),
    (["--epochs"], "--epochs: expected one argument"),
    (["--no-deterministic", "true"], "--no-deterministic takes no value"),
    (["--deterministic", "maybe"], "--deterministic: expected bool, got 'maybe'"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_argparse_failures_are_one_paragraph_errors(argv, needle):
    """Issue 22 item 7: exit code 2 and the house message, not argparse's usage dump."""
    run = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("train.py: error: ") and needle in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1  # one paragraph
    assert "usage:" not in run.stderr and "Traceback" not in run.stderr and not run.stdout


def test_config_directory_and_non_utf8_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=f"--config {tmp_path} is a directory"):
        parse_args(Config, ["--config", str(tmp_path)])
    binary = tmp_path / "weights.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe lr: 0.1\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        parse_args(Config, ["--config", str(binary)])


def test_messages_name_flags_as_flags():
    with pytest.raises(ConfigError, match="^--epochs: expected int"):
        parse_args(Config, ["--epochs", "ten"])
    with pytest.raises(ConfigError, match="^--optimizer adam: unknown optimizer"):
        parse_args(Config, ["--optimizer", "adam"])


def test_choices_are_case_insensitive_and_stored_as_declared():
    cfg, _ = parse_args(Config, ["--dataset", "cifar10", "--optimizer", "SGD"])
    assert (cfg.dataset, cfg.optimizer) == ("Cifar10", "sgd")
    cfg, _ = parse_args(EvalConfig, ["--dataset", "imagenet", "--protocol", "Dense"])
    assert (cfg.dataset, cfg.protocol) == ("ImageNet", "dense")


def test_list_fields_take_spaces_or_commas_in_both_tools():
    for argv in (["--train_scale", "256", "512"], ["--train_scale", "256,512"]):
        assert parse_args(Config, argv)[0].train_scale == (256, 512)
        assert parse_args(EvalConfig, argv)[0].train_scale == [256, 512]
    cfg, _ = parse_args(EvalConfig, ["--checkpoint", "a.pt", "b.pt", "--scale", "multi", "288"])
    assert cfg.checkpoint == ["a.pt", "b.pt"] and cfg.scale == ["multi", 288]
    cfg, _ = parse_args(EvalConfig, ["--checkpoint", "runs/1,runs/2", "--scale", "256,384"])
    assert cfg.checkpoint == ["runs/1", "runs/2"] and cfg.scale == [256, 384]
    assert parse_args(Config, ["--train_scale", "none"])[0].train_scale is None
    cfg, _ = parse_args(EvalConfig, ["--flip", "false", "--progress", "false"])
    assert cfg.flip is False and cfg.progress is False


def test_eval_config_defaults_and_yaml(tmp_path):
    c = EvalConfig()
    assert (c.protocol, c.split, c.precision, c.scale, c.flip) == (
        "dense", "test", "fp32", None, None)  # Sec. 3.2 dense, fp32 as the paper's numbers
    path = tmp_path / "eval.yaml"
    path.write_text("checkpoint: [runs/a/best.pt, runs/b/best.pt]\nscale: [single, 320]\n")
    cfg, _ = parse_args(EvalConfig, ["--config", str(path), "--limit", "8"])
    assert cfg.checkpoint == ["runs/a/best.pt", "runs/b/best.pt"] and cfg.scale == ["single", 320]
    configuration.save_yaml(configuration.to_dict(cfg), tmp_path / "again.yaml")
    assert parse_args(EvalConfig, ["--config", str(tmp_path / "again.yaml")])[0] == cfg


@pytest.mark.parametrize("argv, needle", [
    (["--limit", "0"], "--limit 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--device", "tpu"], "--device tpu"),
    (["--checkpoint", "a.pt", "--torchvision_weights", "b.pth"], "not both"),
    (["--checkpoint", "a.pt", "--model_version", "D"], "a checkpoint records its own"),
    (["--train_scale", "1,2,3"], "--train_scale 1,2,3"),
])
def test_eval_config_rejects_bad_values(argv, needle):
    with pytest.raises(ConfigError) as info:
        parse_args(EvalConfig, argv)
    assert needle in str(info.value)


# 9 levels of 9 aliases: a file of under 400 bytes whose value is 9^9 strings when walked.
ALIAS_BOMB = "batch_size: [&a [" + ",".join(["lol"] * 9) + "]" + "".join(
    f",&{chr(ord(a) + 1)} [{','.join([f'*{a}'] * 9)}]" for a in "abcdefgh") + "]\n"


@pytest.mark.parametrize("tool", ["train.py", "evaluate.py"])
def test_a_yaml_alias_bomb_is_a_prompt_error_in_both_tools(tmp_path, tool):
    """Issue 24 item 8: the message about a wrong-type value used to repr() it whole, 9^9
    shared references, and hang. The timeout is a hang guard (startup takes seconds)."""
    assert len(ALIAS_BOMB) < 400
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    done = subprocess.run([sys.executable, tool, "--config", str(tmp_path / "bomb.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"{tool}: error: --batch_size: expected int, got [[")
    assert len(done.stderr) < 2000 and "Traceback" not in done.stderr  # short_repr's cap


class Unprintable(list):
    """A list whose repr() fails the test: a stand-in for one too large to print."""

    def __repr__(self):
        raise AssertionError("repr() of a valid value")


def test_a_valid_value_is_never_repr_d_and_a_wrong_one_briefly():
    """The type error's message is built only when the value is wrong (a valid 9^9-item
    value used to be printed whole, and thrown away), and then capped."""
    assert configuration.coerce("x", Unprintable([1, 2]), list[int]) == [1, 2]
    assert configuration.coerce("x", Unprintable([1, 2]), list[int] | None) == [1, 2]
    shared = ["lol"] * 9
    for _ in range(8):
        shared = [shared] * 9
    with pytest.raises(ConfigError, match=r"--x: expected int, got \[\[\[") as error:
        configuration.coerce("x", shared, int)
    # The value's part is short_repr's at most 200 characters, cut with " ...".
    assert len(str(error.value)) < 260 and str(error.value).endswith(" ... (list)")


@pytest.mark.parametrize("text, needle", [
    ("1: 2\n", "must be option names (text), got 1"),
    ("lr: 0.1\nnull: 3\n", "got None"),
    ("lr: [" * 5000 + "]" * 5000 + "\n", "nests its values too deeply"),
], ids=["int key", "null key", "nested 5000 deep"])
def test_yaml_keys_that_are_not_names_and_deep_nesting_are_errors(tmp_path, text, needle):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_args(Config, ["--config", str(tmp_path / "c.yaml")])


def test_config_that_is_a_fifo_or_a_device_is_named_as_such(tmp_path):
    """Issue 24: not "does not exist"; and never read (a FIFO blocks, /dev/zero is endless)."""
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", Path("/dev/zero")):
        with pytest.raises(ConfigError, match="is not a regular file"):
            parse_args(Config, ["--config", str(path)])
