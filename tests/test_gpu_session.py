"""benchmarks/gpu_session.sh's schedule: a GPU session is one try of about 9 minutes, so a step
that hangs or fails must cost its own table only. The script is run for real, with a
stand-in interpreter whose throughput step hangs and whose data step fails, and time limits
scaled down to 5% (TIME_PERCENT) so that the schedule plays out in seconds."""

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!/bin/bash
case "$*" in
  *benchmarks.train_throughput*) echo "first rows of a table"; exec sleep 600 ;;
  *benchmarks.gpu_data*) echo "a table, then a crash"; exit 3 ;;
  *) echo "ran: $*" ;;
esac
"""


def test_a_hanging_step_is_stopped_in_time_for_the_others_and_fails_the_run(tmp_path):
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    out, carry = tmp_path / "out", tmp_path / "carry"
    carry.mkdir()
    # Limits at 5%: throughput 10 s, the later steps need 11 s together; a budget of 20 s
    # leaves the hanging step 20 - 11 = 9 s, not its own 10.
    env = {**os.environ, "PYTHON": str(python), "OUT": str(out), "CARRY": str(carry),
           "TIME_PERCENT": "5", "BUDGET": "20", "DEVICE": "cpu"}
    result = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("== done in"):].splitlines()[1:]
    assert summary == [
        "throughput: exit code 124 (stopped at 9s)",
        "gpu_data: exit code 3",
        "memory: exit code 0",
        f"cifar: skipped (no CIFAR-10 zip in {carry})",
        "distributed: exit code 0",
        f"nccl_train: skipped (no CIFAR-10 zip in {carry})",
        f"nccl_evaluate: skipped (no CIFAR-10 zip in {carry})"]
    # Each table was written as its step ran, the hung step's first rows included.
    throughput = (out / "throughput.txt").read_text()
    assert "first rows of a table" in throughput and "exit code 124" in throughput
    assert "a table, then a crash" in (out / "gpu_data.txt").read_text()
    assert "ran: -m benchmarks.train_memory" in (out / "memory.txt").read_text()
    assert "throughput: exit code 124" in (out / "environment.txt").read_text()
    assert len(list(out.iterdir())) <= 8  # the device tool brings back 8 files at most


def test_a_run_whose_steps_all_pass_exits_0(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/bash\necho \"ran: $*\"\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PYTHON": str(python), "OUT": str(tmp_path / "out"),
           "CARRY": str(tmp_path), "TIME_PERCENT": "5", "DEVICE": "cpu"}
    result = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "memory: exit code 0" in result.stdout
