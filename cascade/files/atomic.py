"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A reader (or a rerun after a kill) sees either the old complete file or the new complete
file, never half of one: `os.replace` is atomic on POSIX when source and target are on the
same file system, which a sibling temporary file guarantees.

One scheme for every file the project writes (sample images, reports, statistics, sheets,
shards): the temporary of ``NAME`` is ``.NAME.RANDOM.tmp`` next to it; publishing it flushes and
fsyncs it, gives it the permissions a plain new file would have and renames it onto ``NAME``.
A killed writer leaves its temporary behind; `remove_stale_temporaries` clears them on resume.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target` to write the whole file to (by name); on success
    publish it onto `target` (fsync, plain permissions, rename).

    On an exception the temporary file is removed and `target` is left untouched.
    """
    target = Path(target)
    fd, tmp = _create_temporary(target)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            _publish(handle, tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicFile:
    """A binary file streamed through `handle` into a temporary next to `target`: `commit`
    publishes it as `atomic_path` does, `discard` removes it. For writers that produce a file
    piece by piece (a tar shard, sample after sample); as a context manager it commits on
    success and discards on an exception."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        fd, self.tmp = _create_temporary(self.target)
        self.handle: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        try:
            with self.handle:
                _publish(self.handle, self.tmp, self.target)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.target

    def discard(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def remove_stale_temporaries(folder: str | os.PathLike[str], targets: Iterable[str] | None = None) -> int:
    """Delete the temporary files that a writer killed mid-write left in `folder` (a kill skips
    the cleanup) for the files named `targets`, or for every file when `targets` is None; one
    listing of the folder, returns how many. Only for a caller that owns those targets (None: the
    whole folder): another process writing one at the same time would lose its temporary file."""
    wanted = None if targets is None else set(targets)
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            target = _target_of_temporary(entry.name)
            if target is not None and (wanted is None or target in wanted):
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


def _create_temporary(target: Path) -> tuple[int, Path]:
    """A new empty temporary ".TARGET.RANDOM.tmp" next to `target` (its folder is created): an
    open descriptor and its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TEMPORARY_SUFFIX, dir=target.parent)
    return fd, Path(name)


def _publish(handle: BinaryIO, tmp: Path, target: Path) -> None:
    """Make the temporary durable (flush and fsync through `handle`), give it the permissions a
    plain new file would have (mkstemp creates 0600) and rename it onto `target`."""
    handle.flush()
    os.fsync(handle.fileno())
    os.chmod(tmp, 0o666 & ~_current_umask())
    os.replace(tmp, target)


def _target_of_temporary(name: str) -> str | None:
    """The target's name of a temporary ".TARGET.RANDOM.tmp" (mkstemp's RANDOM has no dots),
    else None."""
    if not (name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX)):
        return None
    parts = name[1 : -len(_TEMPORARY_SUFFIX)].rsplit(".", 1)
    return parts[0] if len(parts) == 2 else None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
