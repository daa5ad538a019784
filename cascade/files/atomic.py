"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A reader (or a rerun after a kill) sees either the old complete file or the new complete
file, never half of one: `os.replace` is atomic on POSIX when source and target are on the
same file system, which a sibling temporary file guarantees.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success make it durable (fsync), give it
    the permissions a plain new file would have, and rename it onto `target`.

    On an exception the temporary file is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=_TEMPORARY_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike[str], targets: Iterable[str]) -> int:
    """Delete the temporary files that `atomic_path` left behind for the files named `targets`
    in `folder` when a process was killed mid-write (a kill skips the cleanup); one listing of
    the folder, returns how many. Only for a caller that owns those targets: another process
    writing one at the same time would lose its temporary file."""
    wanted = set(targets)
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if _target_of_temporary(entry.name) in wanted:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(target, text.encode(encoding))


def save_npz(target: str | os.PathLike[str], **arrays: Any) -> Path:
    """`numpy.savez` to `target` atomically (the name is kept exactly, no `.npz` appended)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes(target, buffer.getvalue())


_TEMPORARY_SUFFIX = ".tmp"


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def _target_of_temporary(name: str) -> str | None:
    """The target's name of an `atomic_path` temporary ".TARGET.RANDOM.tmp" (mkstemp's RANDOM
    has no dots), else None."""
    if not (name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX)):
        return None
    parts = name[1 : -len(_TEMPORARY_SUFFIX)].rsplit(".", 1)
    return parts[0] if len(parts) == 2 else None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
