"""The shard format: WebDataset tar files, one sample per key.

A sample is the tar members ``<key>.<field>`` for one key (keys contain no dots):

=============  ==========================================================================
field          content
=============  ==========================================================================
``jpg``        the image, one of ``jpg`` / ``png`` / ``webp`` (exactly one per sample)
``cls``        optional: the integer class id as ASCII text
``txt``        optional: the caption, UTF-8
``json``       optional: metadata (source path, synthetic ground truth, text-encoder info)
``emb.npy``    optional: precomputed text token embeddings, float16 (n, D), the n real
               tokens of the caption (the encoder mask's True positions, a prefix);
               the loader pads them to ``json["text_encoder"]["max_length"]`` rows and
               rebuilds the mask. ``json["text_encoder"]`` names the encoder
               (``kind``, ``name``, ``max_length``, ``dim``).
=============  ==========================================================================

Shards are named ``shard-000000.tar``, ``shard-000001.tar``, ... and written with fixed tar
headers (mtime 0, uid 0, mode 0444), so writing the same samples twice gives identical bytes.
"""

from __future__ import annotations

import glob
import io
import json
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import braceexpand
import numpy as np

from ..files.atomic import AtomicFile

IMAGE_FIELDS: tuple[str, ...] = ("jpg", "png", "webp")
SHARD_PATTERN = "shard-{index:06d}.tar"
EMBEDDING_FIELD = "emb.npy"
TAR_BLOCK = 512
TAR_END_BYTES = 10_240  # end-of-archive blocks, padded to tarfile's record size
# What reading a damaged shard raises: a truncated or corrupt tar (or its gzip/xz/bz2 stream), an I/O error.
SHARD_READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError)


def shard_name(index: int) -> str:
    """File name of the shard with this index."""
    return SHARD_PATTERN.format(index=index)


def encode_field(field: str, value: Any) -> bytes:
    """Serialise one field of a sample to the bytes stored in the tar."""
    if isinstance(value, bytes):
        return value
    if field == "cls":
        return str(int(value)).encode("ascii")
    if field == "txt":
        return str(value).encode("utf-8")
    if field == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if field.endswith(".npy"):
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(value), allow_pickle=False)
        return buffer.getvalue()
    raise TypeError(f"cannot encode field {field!r} of type {type(value).__name__}")


def decode_caption(data: bytes) -> str:
    """The caption stored in a ``txt`` field: UTF-8 (UnicodeDecodeError otherwise), without
    surrounding whitespace."""
    return data.decode("utf-8").strip()


def encode_sample(sample: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(member name, bytes) pairs for a sample dict with ``__key__`` and field entries."""
    key = sample["__key__"]
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    return [(f"{key}.{field}", encode_field(field, value)) for field, value in sample.items() if field != "__key__"]


def member_bytes(members: Iterable[tuple[str, bytes]]) -> int:
    """Bytes the members take inside a tar (header block + data padded to 512-byte blocks)."""
    return sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for _, data in members)


def add_members(tar: tarfile.TarFile, members: Iterable[tuple[str, bytes]]) -> None:
    """Append members to an open tar with fixed headers (reproducible bytes)."""
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))


def member_key_and_field(name: str) -> tuple[str, str]:
    """(sample key, field) of a tar member, by webdataset's rule: the key is the member's path up
    to the first dot of its file name, the field the rest ("a/b.seg.png" -> ("a/b", "seg.png"))."""
    folder, slash, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return folder + slash + stem, field


def read_samples(shard: str | BinaryIO) -> Iterator[dict[str, bytes]]:
    """Raw samples of one shard, a local path or an open binary stream (plain or compressed tar,
    read as a stream), in order: {"__key__": key, field: bytes, ...}; consecutive members with the
    same key form a sample. A sample is yielded once the next key (or the end) shows it is
    complete, so a shard that breaks off with an error (`SHARD_READ_ERRORS`) does not yield the
    sample it broke off in."""
    current: dict[str, bytes] | None = None
    source = {"name": shard} if isinstance(shard, str) else {"fileobj": shard}
    with tarfile.open(mode="r|*", **source) as tar:
        for info in tar:
            if not info.isreg():
                continue
            key, field = member_key_and_field(info.name)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[field] = tar.extractfile(info).read()
            tar.members = []  # a stream has no use for the headers read so far: keep memory flat
    if current is not None:
        yield current


def shard_keys(path: str) -> list[str]:
    """The sample keys of a local shard in stored order, reading only the tar headers."""
    keys: list[str] = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            key = member_key_and_field(info.name)[0]
            if info.isreg() and (not keys or keys[-1] != key):
                keys.append(key)
    return keys


class AtomicShard:
    """One shard being written: its tar streams into an `AtomicFile`, a temporary
    ``.shard-NNNNNN.tar.RANDOM.tmp`` next to `path`; `commit` publishes it under `path` (fsync,
    rename), `discard` removes it. A killed writer's temporary is cleared by
    `cascade.files.atomic.remove_stale_temporaries`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = AtomicFile(path)
        self.tar = tarfile.open(fileobj=self.file.handle, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.bytes = TAR_END_BYTES

    def add(self, members: list[tuple[str, bytes]], size: int) -> None:
        add_members(self.tar, members)
        self.samples += 1
        self.bytes += size

    def commit(self) -> None:
        self.tar.close()  # writes the end-of-archive blocks; the file stays open
        self.file.commit()

    def discard(self) -> None:
        self.file.discard()


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def resolve_shards(spec: str | list[str] | None, flag: str) -> list[str]:
    """Expand a shard specification into a list of shard paths, failing early and clearly.

    `spec` is a directory (every ``*.tar`` in it), a glob (``shards/*.tar``), a brace pattern
    (``shards/shard-{000000..000009}.tar``), a single path, or a list of any of these. Remote
    URLs (``s3://...``, ``pipe:...``) are passed through unchecked. `flag` names the setting
    in error messages.
    """
    if spec is None or (isinstance(spec, (list, tuple)) and len(spec) == 0) or spec == "":
        raise ValueError(f"{flag}: no shards given (the shard list is empty)")
    patterns = [spec] if isinstance(spec, str) else list(spec)
    paths: list[str] = []
    for pattern in patterns:
        for expanded in braceexpand.braceexpand(str(pattern)):
            paths.extend(_expand_one(expanded, flag))
    if not paths:
        raise ValueError(f"{flag}: {spec!r} matched no shard files")
    return paths


def _expand_one(pattern: str, flag: str) -> list[str]:
    if _is_remote(pattern):
        return [pattern]
    if os.path.isdir(pattern):
        found = sorted(glob.glob(os.path.join(pattern, "*.tar")))
        if not found:
            raise ValueError(f"{flag}: directory {pattern!r} contains no *.tar shards")
        return found
    if glob.has_magic(pattern):
        found = sorted(glob.glob(pattern))
        if not found:
            raise ValueError(f"{flag}: pattern {pattern!r} matched no shard files")
        return found
    if not os.path.isfile(pattern):
        raise FileNotFoundError(f"{flag}: shard {pattern!r} does not exist")
    return [pattern]
