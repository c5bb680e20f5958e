"""The GPU machines' Python stack (requirements-device-stack.txt) has no wandb, albumentations,
nbformat or nbclient (nor tensorboard, safetensors or webdataset, which it does not pin).
The suite and training must not depend on them there: a GPU session is too short to lose
to an import a CPU could have caught (issue 25). A module set to None in sys.modules fails
to import, exactly as an uninstalled one does."""

import subprocess
import sys
from pathlib import Path

import train
from tests.test_train_cli import rows, tiny

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("wandb", "albumentations", "nbformat", "nbclient", "tensorboard", "safetensors",
            "webdataset")


def test_the_suite_collects_without_the_optional_dependencies():
    code = ("import sys\n"
            f"for name in {OPTIONAL!r}:\n    sys.modules[name] = None\n"
            "import pytest\n"
            "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "error" not in summary and "tests collected" in summary, summary
    # The notebook file needs nbformat/nbclient: skipped whole, not an error.
    assert "SKIPPED [1] tests/test_notebook.py" in result.stdout, result.stdout[-3000:]


def test_training_without_wandb_warns_once_and_completes(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "nowandb"
    argv = tiny(run_dir, "--epochs", "1")
    argv[argv.index("--wandb") + 1] = "offline"
    assert train.main(argv) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: W&B")]
    assert len(warnings) == 1 and "wandb is not installed" in warnings[0], err
    assert "--wandb disabled" in warnings[0] and "Traceback" not in err
    assert [r["step"] for r in rows(run_dir, "train")] == list(range(1, 7))
    assert len(rows(run_dir, "epoch")) == 1
