"""cascade.files.atomic: the one atomic-write scheme (sample folders, reports, statistics, sheets, shards)."""

import os
import stat

import pytest

from cascade.files.atomic import AtomicFile, atomic_path, remove_stale_temporaries, write_bytes


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


def test_a_streamed_file_appears_whole_on_commit_and_not_at_all_on_discard(tmp_path):
    target = tmp_path / "shard-000000.tar"
    with AtomicFile(target) as streamed:
        streamed.handle.write(b"first half, ")
        assert not target.exists()
        assert streamed.tmp.parent == tmp_path and streamed.tmp.name.startswith(".shard-000000.tar.")
        streamed.handle.write(b"second half")
    assert target.read_bytes() == b"first half, second half"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(RuntimeError), AtomicFile(target) as streamed:
        streamed.handle.write(b"half")
        raise RuntimeError("failed mid-write")
    assert target.read_bytes() == b"first half, second half"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_an_owner_of_the_whole_folder_removes_every_stale_temporary(tmp_path):
    for name in ("a.json", "shard-000003.tar"):
        abandoned = AtomicFile(tmp_path / name)  # killed: neither committed nor discarded
        abandoned.handle.close()
    (tmp_path / ".hidden").write_bytes(b"")  # not a temporary of this scheme
    (tmp_path / "notes.tmp").write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "notes.tmp"]
