"""Content hashes of files, read in 1 MiB blocks so large weight files never sit in memory."""

from __future__ import annotations

import hashlib
import os

_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike[str], length: int | None = None) -> str:
    """The SHA-256 of a file's bytes as hex digits: all 64, or the first `length`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
