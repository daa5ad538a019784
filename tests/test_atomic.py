"""cascade.files.atomic: the one atomic-write helper (sample folders, reports, statistics, sheets)."""

import os
import stat

import pytest

from cascade.files.atomic import atomic_path, remove_stale_temporaries, write_bytes


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


def test_stale_temporaries_of_a_killed_writer_are_removed_for_that_target_only(tmp_path):
    target = tmp_path / "00001_000.png"
    with atomic_path(target) as tmp:  # a kill skips the cleanup: keep a copy of the temporary
        tmp.write_bytes(b"half")
        stale = tmp.with_name(tmp.name.replace(".png.", ".png.killed"))
        stale.write_bytes(b"half")
    other = tmp_path / ".00001_000.json.abc.tmp"  # another file's temporary stays
    other.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path, [target.name]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name])
    assert remove_stale_temporaries(tmp_path, ["[weird].png"]) == 0  # names are not glob patterns
