"""Precompute text embeddings into shards, so the frozen text encoder stays out of training.

`precompute_text` reads every shard, encodes each sample's caption with the text encoder it is
handed (a `cascade.nn.TextEncoder`; this package does not build one), and writes a copy of the shard to the output folder with two changes
per sample: an ``emb.npy`` entry (float16, shape (n, D): the embeddings of the n real tokens,
i.e. the rows where the encoder's mask is True, which is a prefix of the max_length rows) and
``json["text_encoder"] = {"kind", "name", "max_length", "dim", "layer"}``. `cascade.data.transforms` pads the
rows back to ``max_length`` and rebuilds the mask. Samples without a readable UTF-8 caption
are copied unchanged (the loader will skip them when it asks for embeddings).

Output shards are written atomically; a rerun skips shards already in the output folder.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from rich.progress import track

from ..files.atomic import remove_stale_temporaries, write_bytes
from .shards import (
    EMBEDDING_FIELD,
    AtomicShard,
    decode_caption,
    encode_sample,
    member_bytes,
    read_samples,
    resolve_shards,
)


def precompute_text(
    shards: str | list[str],
    out_dir: str,
    encoder: Any,
    batch_size: int = 256,
    progress: bool = True,
) -> list[str]:
    """Write embedding-carrying copies of `shards` into `out_dir`; returns the output paths.

    `encoder` has `encode(captions, batch_size=...) -> (tokens (B,L,D), mask (B,L) bool, ...)`
    and the attributes `kind`, `name`, `max_length` and `dim` (as `cascade.nn.TextEncoder`).
    """
    inputs = resolve_shards(shards, "--shards")
    os.makedirs(out_dir, exist_ok=True)
    if any(os.path.samefile(os.path.dirname(p) or ".", out_dir) for p in inputs):
        raise ValueError(f"--out {out_dir!r} must differ from the folder of the input shards")
    remove_stale_temporaries(out_dir)  # a killed run's; the output folder is ours alone
    info = {"kind": encoder.kind, "name": encoder.name, "max_length": encoder.max_length, "dim": encoder.dim,
            "layer": getattr(encoder, "layer", None)}
    outputs = []
    for shard in track(inputs, description="embedding captions", disable=not progress):
        output = os.path.join(out_dir, os.path.basename(shard))
        outputs.append(output)
        if not os.path.exists(output):
            _embed_shard(shard, output, encoder, info, batch_size)
    _copy_side_files(inputs, out_dir)
    return outputs


def _embed_shard(shard: str, output: str, encoder, info: dict[str, Any], batch_size: int) -> None:
    samples = list(read_samples(shard))
    captions = {index: caption for index, s in enumerate(samples) if (caption := _caption(s)) is not None}
    encoding = encoder.encode(list(captions.values()), batch_size=batch_size)
    tokens = encoding.tokens.to("cpu", torch.float16).numpy()
    mask = encoding.mask.cpu().numpy()
    out = AtomicShard(output)
    try:
        for row, index in enumerate(captions):
            length = int(mask[row].sum())
            if not mask[row, :length].all():
                raise ValueError(f"{encoder.name}: the token mask is not a prefix (left padding?); cannot store it")
            samples[index][EMBEDDING_FIELD] = tokens[row, :length]
            samples[index]["json"] = {**_metadata(samples[index]), "text_encoder": info}
        for sample in samples:
            members = encode_sample(sample)
            out.add(members, member_bytes(members))
        out.commit()
    except BaseException:
        out.discard()
        raise


def _metadata(sample: dict[str, bytes]) -> dict[str, Any]:
    """The sample's json as a dict ({} when it has none or it is unreadable)."""
    try:
        value = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _caption(sample: dict[str, bytes]) -> str | None:
    try:
        return decode_caption(sample["txt"]) if "txt" in sample else None
    except UnicodeDecodeError:
        return None


def _copy_side_files(inputs: list[str], out_dir: str) -> None:
    """Copy manifest.json / classes.json of the input folder (same shard names and counts)."""
    folders = {os.path.dirname(p) for p in inputs}
    if len(folders) != 1:
        return
    folder = folders.pop()
    for name in ("manifest.json", "classes.json"):
        source = os.path.join(folder, name)
        if os.path.exists(source):
            with open(source, "rb") as handle:
                write_bytes(os.path.join(out_dir, name), handle.read())
