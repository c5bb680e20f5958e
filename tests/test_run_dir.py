"""vgg/run_dir.py: claiming, locking and pruning run directories on a real file system."""

import os
import subprocess
import sys

from vgg.run_dir import claim_run_dir, remove_stale_temporaries


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
