"""eval.atomic: the one atomic-write helper (sample folders, reports, statistics, sheets)."""

import os
import stat

import pytest

from eval.atomic import atomic_path, write_bytes


def test_write_is_whole_with_plain_file_permissions(tmp_path):
    target = write_bytes(tmp_path / "sub" / "file.bin", b"payload")
    assert target.read_bytes() == b"payload"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_bytes(tmp_path / "file.txt", b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
