"""The health monitor (vgg/health.py) in real training runs: a configuration known to stall
is flagged within a bounded number of steps, with evidence and the fixes that fit it, and
the verdict survives a resume; the presets' healthy runs raise no alarm."""

import math
from pathlib import Path

import pytest
import torch

import train
from tests.test_train_cli import MNIST, rows
from vgg.checkpoint import load_checkpoint
from vgg.engine import train_step
from vgg.health import HealthMonitor, at_chance, budget_steps
from vgg.model import build_vgg

ROOT = Path(__file__).resolve().parents[1]
def test_chance_is_judged_against_ln_classes_and_one_over_classes():
    # ln 10 = 2.302585; within 3% of it (>= 2.2335) and top-1 <= 10% + 0.1 x 90% = 19%.
    assert at_chance(2.25, 1 - 0.15, 10)
    assert not at_chance(2.20, 1 - 0.15, 10)  # the loss has moved
    assert not at_chance(2.30, 1 - 0.25, 10)  # top-1 has moved
    # two classes: ln 2 = 0.6931, the 0.693 plateau at 52% top-1
    assert at_chance(0.6932, 0.48, 2) and not at_chance(0.60, 0.48, 2)
    # one epoch of steps, clamped to [100, 1000], after the lr warm-up
    assert (budget_steps(20, 0), budget_steps(352, 352), budget_steps(5005, 0)) == \
        (100, 704, 1000)


def stalling(run_dir: Path, *extra: str) -> list[str]:
    """VGG-D without BN at the paper's init (normal, std 1e-2) on Digits: its signal
    vanishes through 13 conv layers and the loss stays at ln 10. Narrow for speed."""
    return ["--dataset", "Digits", "--model_version", "D", "--batch_norm", "false",
            "--init", "paper", "--width", "0.125", "--fc_width", "64", "--batch_size", "64",
            "--workers", "0", "--device", "cpu", "--wandb", "disabled", "--progress", "false",
            "--log_interval", "5", "--max_steps", "140", "--out_dir", str(run_dir.parent),
            "--run_name", run_dir.name, *extra]


def test_a_stalling_deep_net_is_flagged_with_evidence_and_fixes_and_stays_flagged(
        tmp_path, capsys):
    run_dir = tmp_path / "stall"
    assert train.main(stalling(run_dir, "--on_stall", "stop")) == 1
    err = capsys.readouterr().err
    health = rows(run_dir, "health")
    assert len(health) == 1
    step = health[0]["step"]
    assert step <= budget_steps(20, 0) + 5  # Digits: 20 steps of 64 per epoch
    message = health[0]["message"]
    assert message in err and "stopped by --on_stall stop" in err
    assert f"ln 10 = {math.log(10):.4f}" in message
    for fix in ("--batch_norm true", "--lr_find", "--warmup_epochs 1", "--init kaiming",
                "--init from_A", "--model_version A"):
        assert fix in message, fix
    assert "gradient norm per conv stage" in message and "dead ReLU" in message
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["step"] == step and checkpoint["health"]["warned_step"] == step
    # Resumed (with --on_stall stop still set) past the budget and two more logging
    # intervals at chance, the run is not stopped again for it.
    more = max(step, budget_steps(20, 0)) + 15
    assert train.main(["--resume", str(run_dir), "--max_steps", str(more)]) == 0
    assert len(rows(run_dir, "health")) == 1
    assert load_checkpoint(run_dir / "last.pt")["step"] == more


def test_the_stall_is_not_flagged_with_on_stall_ignore(tmp_path, capsys):
    run_dir = tmp_path / "ignored"
    assert train.main(stalling(run_dir, "--on_stall", "ignore", "--max_steps", "110")) == 0
    assert rows(run_dir, "health") == []
    assert "not learning" not in capsys.readouterr().err


def test_a_diverging_lr_is_flagged(tmp_path, capsys):
    # An lr of 1e4 on the quickstart's network: most steps non-finite, skipped; the steps
    # that were applied blow the weights up, so the run ends failed (exit 1) at its
    # checkpoint, which refuses to save them. The warning came first, at step 5.
    run_dir = tmp_path / "diverge"
    args = ["--config", str(ROOT / "configs" / "quickstart_digits.yaml"), "--width", "0.25",
            "--fc_width", "64", "--lr", "1e4", "--on_nonfinite", "skip", "--max_steps", "10",
            "--wandb", "disabled", "--progress", "false", "--out_dir", str(tmp_path),
            "--run_name", "diverge"]
    assert train.main(args) == 1
    assert "became inf or NaN" in capsys.readouterr().err
    assert not (run_dir / "last.pt").exists()
    health = rows(run_dir, "health")
    assert len(health) == 1 and health[0]["step"] == 5  # the first logging interval
    assert "non-finite" in health[0]["message"] and "--lr" in health[0]["message"]
    assert "--batch_norm" not in health[0]["message"]  # it has BN; no cure for divergence


SMALL_SCALE = ("--train_subset", "640", "--batch_size", "32", "--width", "0.125",
               "--max_steps", "160", "--log_interval", "20", "--workers", "0")


def healthy(preset: str, tmp_path: Path, *extra: str) -> list[dict]:
    """Run ``preset`` past its monitor's warm-up budget by two logging intervals; its
    metrics rows. Data sizes as in the preset unless ``extra`` says otherwise."""
    args = ["--config", str(ROOT / "configs" / preset), "--wandb", "disabled", "--progress",
            "false", "--out_dir", str(tmp_path), "--run_name", "healthy", *extra]
    assert train.main(args) == 0
    metrics = rows(tmp_path / "healthy", "train")
    assert rows(tmp_path / "healthy", "health") == []
    return metrics


@pytest.mark.slow
def test_the_quickstart_raises_no_false_alarm(tmp_path, capsys):
    # The preset's network at a quarter of its widths (a 2-core CPU's minutes).
    metrics = healthy("quickstart_digits.yaml", tmp_path, "--max_steps", "115", "--width",
                      "0.25", "--fc_width", "64")
    assert metrics[-1]["step"] >= budget_steps(20, 0) + 10  # judged past the budget
    assert "not learning" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_mnist_preset_raises_no_false_alarm(tmp_path):
    # 640 of MNIST's images in batches of 32: 18 steps per epoch, so the budget is 18
    # warm-up steps + 100 (the preset logs every 100 steps: 20 here). Half its widths.
    metrics = healthy("mnist.yaml", tmp_path, "--data_root", str(MNIST), *SMALL_SCALE)
    assert metrics[-1]["step"] >= 140


def test_dead_relus_and_stage_gradients_are_measured_on_the_sampled_step():
    # A ReLU fed only negative numbers is dead: half of the first conv's 8 channels get a
    # bias of -100.
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=3, image_size=32, width=0.125, fc_width=16)
    first = model.features[0]
    with torch.no_grad():
        first.bias[:4] = -100.0
    monitor = HealthMonitor(model, num_classes=3, steps_per_epoch=10, warmup_steps=0,
                            remedies=[], state={})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with monitor.sampling(due=True):
        result = train_step(model, optimizer, [(x, y)], device=torch.device("cpu"))
    measures = monitor.measure(result)
    assert measures["dead_relu_stage1"] == 0.5
    assert torch.all(first.weight.grad[:4] == 0)  # no gradient through a dead ReLU
    stage1 = torch.cat([first.weight.grad.flatten(), first.bias.grad])
    assert measures["grad_norm_stage1"] == pytest.approx(stage1.norm().item(), rel=1e-5)
    assert set(measures) == {f"{kind}_stage{i}" for kind in ("grad_norm", "dead_relu")
                             for i in range(1, 6)}
    with monitor.sampling(due=False):  # an unsampled step: no dead-ReLU figures
        result = train_step(model, optimizer, [(x, y)], device=torch.device("cpu"))
    assert "dead_relu_stage1" not in monitor.measure(result)
