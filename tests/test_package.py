"""The installed package: `pip install .` into a fresh virtual environment, then used from
another directory, where the repository's own files are not on the import path."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a venv and a wheel build: about 15 s on 2 cores


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new venv holding a regular (not editable) install of the repository; torch and the
    other dependencies come from this interpreter's site-packages, not from a download."""
    where = tmp_path_factory.mktemp("venv")
    # pip builds a local project in place (build/, *.egg-info): build a copy, not the checkout.
    source = tmp_path_factory.mktemp("source") / "repo"
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        name for name in names if name.startswith(".") or name in {"__pycache__", "build"}
        or Path(folder) == ROOT and name in {"runs", "data", "notebooks", "docs", "tests"}])
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    # This interpreter may itself be a venv, whose packages --system-site-packages misses.
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
                    str(source)], check=True, timeout=600, cwd=where,
                   env={**os.environ, "PIP_NO_INDEX": "1"})
    return where


def run_in(venv: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**env, "WANDB_MODE": "disabled", "COLUMNS": "100",
                               "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"})


def test_the_library_imports_from_another_directory(venv, tmp_path):
    run = run_in(venv, tmp_path, str(venv / "bin" / "python"), "-c",
                 "import vgg, vgg.train_data, vgg.pretrained, vgg.reproduce\n"
                 "print(vgg.__file__)")
    assert run.returncode == 0, run.stderr
    package = Path(run.stdout.strip()).parent
    assert package.is_relative_to(venv)  # the installed copy, not the checkout
    assert (package / "py.typed").is_file()  # type checkers read its annotations (PEP 561)


# Each installed command and the script or module it must behave exactly like.
COMMANDS = {"vgg-train": ["train.py"], "vgg-evaluate": ["evaluate.py"],
            "vgg-predict": ["predict.py"], "vgg-export": ["-m", "vgg.export"],
            "vgg-plot": ["-m", "vgg.plot"], "vgg-results": ["-m", "vgg.results"],
            "vgg-summary": ["-m", "vgg.summary"], "vgg-reproduce": ["-m", "vgg.reproduce"],
            "vgg-lr-find": ["-m", "vgg.lr_find"], "vgg-shards": ["-m", "vgg.data.shards"]}


def without_program_name(help_text: str) -> tuple[str, str]:
    """The usage paragraph without the program's name (vgg-train rather than train.py, and
    so wrapped differently), and the rest of the help as it is."""
    usage, _, rest = help_text.partition("\n\n")
    assert usage.startswith("usage: ")
    program = usage[len("usage: "):usage.index(" [")]  # up to the first option
    return " ".join(usage.replace(program, "", 1).split()), rest


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_prints_the_help_of_its_script(venv, tmp_path, command):
    installed = run_in(venv, tmp_path, command, "--help")
    script = run_in(venv, ROOT, sys.executable, *COMMANDS[command], "--help")
    assert (installed.returncode, script.returncode) == (0, 0), installed.stderr
    assert without_program_name(installed.stdout) == without_program_name(script.stdout)


def test_a_command_fails_as_its_script_does(venv, tmp_path):
    """The same one-paragraph error and exit code 2, from another directory."""
    flags = ["--dataset", "Digits", "--lr", "nan"]
    installed = run_in(venv, tmp_path, "vgg-train", *flags)
    script = run_in(venv, ROOT, sys.executable, "train.py", *flags)
    assert (installed.returncode, script.returncode) == (2, 2)
    assert installed.stderr == script.stderr
    assert installed.stderr.startswith("train.py: error: --lr")
