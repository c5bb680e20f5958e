"""vgg/run_dir.py: claiming, locking and pruning run directories on a real file system."""

import os
import socket
import subprocess
import sys

import pytest

from vgg.checkpoint import load_checkpoint, save_checkpoint
from vgg.run_dir import (
    RunDirectory,
    RunDirectoryError,
    claim_run_dir,
    remove_stale_temporaries,
)


def test_default_run_names_started_in_the_same_second_get_their_own_directories(tmp_path):
    claimed = {claim_run_dir(tmp_path, "Digits-A-20261122-101010") for _ in range(3)}
    assert sorted(p.name for p in claimed) == ["Digits-A-20261122-101010",
                                               "Digits-A-20261122-101010-2",
                                               "Digits-A-20261122-101010-3"]



def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead, alive = int(finished.stdout), os.getpid()
    for pid in (dead, alive):
        (tmp_path / f".last.pt.{pid}.tmp").write_bytes(b"partial")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".last.pt.{alive}.tmp"]


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    return int(finished.stdout)


def create(out_dir, name="r", keep_last_k=0):
    return RunDirectory.create(str(out_dir), name, "default", writer=True,
                               keep_last_k=keep_last_k)


def test_a_live_run_owns_its_directory_and_a_dead_runs_lock_is_taken_over(tmp_path):
    with create(tmp_path) as first:
        lock = (first.path / ".lock").read_text().split()
        assert lock == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(RunDirectoryError, match=f"in use by process {os.getpid()}"):
            create(tmp_path)  # the same --run_name while the first runs
    assert not (tmp_path / "r" / ".lock").exists()  # released at the end
    (tmp_path / "r" / ".lock").write_text(f"{dead_pid()} {socket.gethostname()}\n")
    with create(tmp_path) as second:  # a killed run's lock
        assert (second.path / ".lock").read_text().split()[0] == str(os.getpid())


def test_resuming_an_older_checkpoint_than_the_directorys_newest_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"step": 210, "epoch": 21}, run / "last.pt")
    save_checkpoint({"step": 30, "epoch": 3}, run / "best.pt")
    with pytest.raises(RunDirectoryError, match=r"last\.pt \(step 210\)"):
        RunDirectory.reopen(run / "best.pt", 30, writer=True)
    assert load_checkpoint(run / "last.pt")["step"] == 210 and not (run / ".lock").exists()
    with RunDirectory.reopen(run / "last.pt", 210, writer=True) as reopened:
        assert reopened.path == run


def test_keep_last_k_keeps_the_newest_by_step_not_by_name(tmp_path):
    with create(tmp_path, keep_last_k=1) as run:
        save_checkpoint({"step": 999}, run.path / "epoch_999.pt")
        run.save_epoch({"step": 1000}, 1000, is_best=False)  # "epoch_1000" < "epoch_999"
        assert sorted(p.name for p in run.path.glob("*.pt")) == ["epoch_1000.pt", "last.pt"]
        assert load_checkpoint(run.path / "epoch_1000.pt")["step"] == 1000


def test_an_out_dir_that_cannot_hold_runs_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    for out_dir in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(RunDirectoryError, match="cannot create a run directory"):
            create(out_dir)
        with pytest.raises(RunDirectoryError, match="cannot create a run directory"):
            RunDirectory.create(str(out_dir), None, "default", writer=True)
