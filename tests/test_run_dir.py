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
    lock_holder,
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
    assert not (tmp_path / "r").exists()  # lock released, the directory it left empty gone
    (tmp_path / "r").mkdir()  # as a killed run leaves it: with its lock file
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


OWNER = """
import sys, time
from vgg.run_dir import RunDirectory
with RunDirectory.create(sys.argv[1], "r", "default", writer=True):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_live_owner_in_another_process_refuses_a_second_run_until_it_dies(tmp_path):
    """Issue 19 item 4 / issue 24: the lock is the owner process's OS lock. While a real
    second process holds it, a run is refused; once that process is killed (no release,
    its .lock file left behind), the next run takes the directory over."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert owner.stdout.readline() == "locked\n"
        with pytest.raises(RunDirectoryError, match=f"in use by process {owner.pid} on "):
            create(tmp_path)
        assert lock_holder(tmp_path / "r" / ".lock") == \
            f"process {owner.pid} on {socket.gethostname()}"  # reproduce.py's "running"
    finally:
        owner.kill()
        owner.wait(timeout=60)
    assert (tmp_path / "r" / ".lock").read_text().split()[0] == str(owner.pid)  # left behind
    assert lock_holder(tmp_path / "r" / ".lock") is None
    with create(tmp_path) as second:
        assert (second.path / ".lock").read_text().split()[0] == str(os.getpid())


@pytest.mark.parametrize("owner", ["{dead} another-host.cluster", "{live} {host}"],
                         ids=["dead owner on another host", "dead owner's pid reused"])
def test_a_lock_file_that_no_process_holds_is_taken_over(tmp_path, owner):
    """A requeued run on another host after its owner's node died, and a dead run whose
    pid now belongs to another live process (here: this one): neither holds the lock."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text(
        owner.format(dead=dead_pid(), live=os.getpid(), host=socket.gethostname()) + "\n")
    assert lock_holder(tmp_path / "r" / ".lock") is None
    with create(tmp_path) as run:
        assert (run.path / ".lock").read_text().split() == [str(os.getpid()),
                                                            socket.gethostname()]
        assert lock_holder(run.path / ".lock") is None  # this process's own
    assert not (tmp_path / "r" / ".lock").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "metrics.csv", "config.yaml",
                                  "epoch_003.pt", "curves.png"])
def test_a_new_run_refuses_a_directory_holding_any_file_of_an_earlier_run(tmp_path, name):
    """Issue 24, data loss 2: last.pt and best.pt moved away, the rest of a run stays."""
    run = tmp_path / "r"
    run.mkdir()
    (run / name).write_bytes(b"an earlier run's record\n")
    with pytest.raises(RunDirectoryError, match=f"holds files of an earlier run \\({name}\\)"):
        create(tmp_path)
    assert (run / name).read_bytes() == b"an earlier run's record\n"
    assert not (run / ".lock").exists()


def test_resume_auto_starts_over_an_attempt_of_the_same_config_that_saved_nothing(tmp_path):
    """A requeued --resume auto whose first attempt died before its first checkpoint (it
    wrote config.yaml and a few metrics rows) starts over; another config's files are kept."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("lr: 0.01\nseed: 0\n")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    with RunDirectory.create(str(tmp_path), "r", "default", writer=True,
                             restartable={"lr": 0.01, "seed": 0}) as restarted:
        assert restarted.path == run
    with pytest.raises(RunDirectoryError, match="holds files of an earlier run"):
        RunDirectory.create(str(tmp_path), "r", "default", writer=True,
                            restartable={"lr": 0.01, "seed": 1})
    save_checkpoint({"step": 3}, run / "epoch_001.pt")  # it did save one: resume that
    with pytest.raises(RunDirectoryError, match="holds files of an earlier run"):
        RunDirectory.create(str(tmp_path), "r", "default", writer=True,
                            restartable={"lr": 0.01, "seed": 0})


def test_a_damaged_checkpoint_beside_last_pt_does_not_block_resuming_it(tmp_path, capsys):
    """Issue 24: best.pt or epoch_*.pt are read only to find a newer step than the one
    resumed. Damaged, they cannot be newer than last.pt's save: a warning. Resuming any
    other checkpoint, a damaged one blocks (it may be the newer one), saying why it is
    read, and the failed resume leaves no .lock."""
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"step": 20}, run / "last.pt")
    save_checkpoint({"step": 20}, run / "epoch_002.pt")
    (run / "best.pt").write_bytes(b"PK\x03\x04 torn")
    with RunDirectory.reopen(run / "last.pt", 20, writer=True):
        pass
    err = capsys.readouterr().err
    assert f"warning: {run / 'best.pt'} cannot be read" in err and "resuming" in err
    with pytest.raises(RunDirectoryError, match="read for its step, so that resuming "
                       "epoch_002.pt never overwrites newer progress; move that file"):
        RunDirectory.reopen(run / "epoch_002.pt", 20, writer=True)
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl"])
def test_a_run_file_turned_into_a_directory_is_refused_before_the_run(tmp_path, name):
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    save_checkpoint({"step": 5}, run / "last.pt")
    with pytest.raises(RunDirectoryError, match=f"{name} is not a regular file"):
        RunDirectory.reopen(run / "last.pt", 5, writer=True)
    assert not (run / ".lock").exists() and (run / name).is_dir()
