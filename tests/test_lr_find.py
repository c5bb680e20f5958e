"""The lr range test (vgg/lr_find.py): its lr sweep against hand-computed values, its
suggestion trains Digits, it writes nothing of a run, and it works for fine-tuning."""

import re
from pathlib import Path

import pytest
import torch

import train
from tests.test_train_cli import rows
from vgg import lr_find
from vgg.engine import StepSettings
from vgg.lr_find import RangeTest, range_test


def test_the_lr_grows_exponentially_and_each_group_keeps_its_ratio():
    # Two parameter groups, the second at 0.1x (a fine-tuned network's pretrained part).
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3))
    optimizer = torch.optim.SGD([{"params": model[0].parameters()},
                                 {"params": model[1].parameters(), "lr_scale": 0.1}], lr=1.0)
    seen = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return step(*args, **kwargs)

    optimizer.step = recording_step
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    test = range_test(model, optimizer, iter([[(x, y)]] * 5),
                      StepSettings(torch.device("cpu")), steps=5, lr_range=(1e-4, 1.0))
    # 1e-4 x (1e4)^(i/4): 1e-4, 1e-3, 1e-2, 1e-1, 1
    assert test.lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert [lr for pair in seen for lr in pair] == \
        pytest.approx([lr * scale for lr in test.lrs for scale in (1.0, 0.1)])


def test_smoothing_and_suggestion_by_hand():
    test = RangeTest()
    for lr, loss in zip((1e-4, 1e-3, 1e-2, 1e-1, 1.0), (4.0, 3.0, 1.0, 2.0, 8.0), strict=True):
        test.add(lr, loss)
    # centred window of one step each side (5% of 5 steps, at least 1), shorter at the ends
    assert test.smoothed == pytest.approx([3.5, 8 / 3, 2.0, 11 / 3, 5.0])
    assert test.lowest == 2 and test.suggestion() == pytest.approx(1e-3)
    flat = RangeTest()
    for lr in (1e-3, 1e-2, 1e-1):
        flat.add(lr, 2.3)
    assert flat.suggestion() is None  # the loss never fell: no lr to suggest


def digits(out_dir: Path, *extra: str) -> list[str]:
    """The quickstart's network (VGG-A with BN) at a quarter width, on Digits."""
    return ["--config", str(Path(train.__file__).parent / "configs" / "quickstart_digits.yaml"),
            "--width", "0.25", "--fc_width", "64", "--wandb", "disabled", "--progress",
            "false", "--out_dir", str(out_dir), *extra]


def test_the_suggested_lr_trains_digits_and_no_run_state_is_left(tmp_path, capsys):
    finder = tmp_path / "finder"
    assert train.main(digits(finder, "--lr_find", "--lr_find_steps", "100",
                             "--lr_find_range", "1e-5,10")) == 0
    out = capsys.readouterr().out
    suggested = float(re.search(r"suggested lr: (\S+)", out)[1])
    assert 1e-5 < suggested < 10 and "smoothed" in out
    # Nothing of a run: only the picture, a real PNG.
    assert [p.name for p in finder.iterdir()] == ["lr_find-quickstart_digits.png"]
    assert (finder / "lr_find-quickstart_digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = tmp_path / "runs"
    assert train.main(digits(runs, "--lr", str(suggested), "--epochs", "3")) == 0
    epochs = rows(runs / "quickstart_digits", "epoch")
    # 10 classes: chance is 90% error; 3 epochs at the suggestion reach under half that
    # (measured: 33%; the preset's own 8 epochs at full width reach 4%).
    assert epochs[-1]["val_top1_err"] < 0.45
    assert rows(runs / "quickstart_digits", "health") == []


def test_fine_tuning_configs_and_python_m_work(tmp_path, capsys):
    # A trained run's weights, fine-tuned with frozen convs and a 0.1x pretrained lr.
    assert train.main(digits(tmp_path / "runs", "--max_steps", "3", "--epochs", "1")) == 0
    capsys.readouterr()
    finder = tmp_path / "finder"
    assert lr_find.main(digits(finder, "--init_from", str(tmp_path / "runs" /
                                                       "quickstart_digits"),
                               "--freeze", "features", "--pretrained_lr_multiplier", "0.1",
                               "--lr_find_steps", "20")) == 0
    out = capsys.readouterr().out
    assert "lr range test" in out and "stopped:" in out
    assert [p.name for p in finder.iterdir()] == ["lr_find-quickstart_digits.png"]


def test_resume_is_refused_with_what_to_use(tmp_path, capsys):
    assert train.main(digits(tmp_path / "runs", "--max_steps", "1", "--epochs", "1")) == 0
    assert train.main(["--resume", str(tmp_path / "runs" / "quickstart_digits"),
                       "--lr_find"]) == 2
    assert "--init_from" in capsys.readouterr().err
