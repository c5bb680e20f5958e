"""vgg/atomic.py: a replaced file is the old one or the new one, never half of either."""

import pytest

from vgg.atomic import replace_atomically


def test_a_failed_atomic_replace_leaves_the_old_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), replace_atomically(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    with replace_atomically(path) as f:
        f.write("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == [path.name]
