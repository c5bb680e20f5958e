"""Configuration: defaults < YAML < flags, every field a flag, clear errors, presets valid."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import dataset_class
from config import Config
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
    (["--lrr", "0.1"], "did you mean 'lr'"),
    (["--epochs", "ten"], "epochs: expected int"),
    (["--nesterov", "maybe"], "nesterov: expected bool"),
    (["--train_scale", "256"], "train_scale"),
    (["--model_version", "F"], "valid choices: " + ", ".join(VERSIONS)),
    (["--dataset", "SVHN"], "Digits"),
    (["--precision", "fp8"], "auto, bf16, fp16, fp32"),
    (["--batch_size", "256", "--micro_batch_size", "100"], "must divide"),
    (["--init", "from_A"], "init_from_A"),
])
def test_bad_values_are_errors_that_list_what_is_valid(argv, needle):
    with pytest.raises(ConfigError, match=None) as info:
        parse_args(Config, argv)
    assert needle in str(info.value)


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


def test_cli_print_config_and_error_exit_code():
    run = subprocess.run([sys.executable, "train.py", "--print_config", "--lr", "0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    printed = yaml.safe_load(run.stdout)
    assert printed["lr"] == 0.5 and printed["model_version"] == "D"
    run = subprocess.run([sys.executable, "train.py", "--optimiser", "sgd"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "did you mean 'optimizer'" in run.stderr and "Traceback" not in run.stderr
