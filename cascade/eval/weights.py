"""Finding model weight files offline, and naming them by content hash.

Nothing here downloads. The FID Inception-v3 weights (the TensorFlow 2015-12-05 graph
converted to PyTorch, the file torch-fidelity and pytorch-fid use) are looked up, in order:

1. the path given explicitly (the `--inception-weights` flag);
2. the environment variable ``CASCADE_INCEPTION_WEIGHTS``;
3. the torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default
   ``~/.cache/torch/hub/checkpoints``) under the names torch-fidelity and pytorch-fid give it.

If none exists, :class:`InceptionWeightsNotFound` says which file is needed, every path
that was tried, and where to put the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

INCEPTION_WEIGHTS_ENV = "CASCADE_INCEPTION_WEIGHTS"
# An extractor's `weights_hash`: this many leading hex digits of the SHA-256 of its weights
# (`cascade.files.hashing.file_sha256` of a weights file, `state_dict_sha256` of built weights).
WEIGHTS_HASH_LENGTH = 16

# torch-fidelity 0.4.0 (feature_extractor_inceptionv3.URL_INCEPTION_V3) and pytorch-fid
# (inception.FID_WEIGHTS_URL) ship the same converted weights under these two names.
INCEPTION_WEIGHTS_FILENAMES = (
    "weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
)
INCEPTION_WEIGHTS_SOURCE = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)


class InceptionWeightsNotFound(FileNotFoundError):
    """The FID Inception-v3 weights file is not on this machine (and will not be downloaded)."""

    def __init__(self, tried: list[Path]):
        self.tried = tried
        hub_target = hub_checkpoint_dir() / INCEPTION_WEIGHTS_FILENAMES[0]
        lines = [
            f"FID Inception-v3 weights not found: need the file {INCEPTION_WEIGHTS_FILENAMES[0]}",
            f"(the same file pytorch-fid names {INCEPTION_WEIGHTS_FILENAMES[1]}).",
            "Paths tried, in order:",
            *(f"  - {path}" for path in tried),
            "Nothing is downloaded at run time. On a machine with internet access, fetch",
            f"  {INCEPTION_WEIGHTS_SOURCE}",
            "and then either",
            f"  - put it at {hub_target}, or",
            f"  - set {INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_WEIGHTS_FILENAMES[0]}, or",
            "  - pass --inception-weights /path/to/the/file.",
            "For a demo without these weights use the extractor 'random-inception' (its numbers are",
            "not comparable to published FIDs).",
        ]
        super().__init__("\n".join(lines))


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder (respects ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights_candidates(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every path :func:`find_inception_weights` looks at, in the order it looks."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit).expanduser())
    from_env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if from_env:
        candidates.append(Path(from_env).expanduser())
    candidates += [hub_checkpoint_dir() / name for name in INCEPTION_WEIGHTS_FILENAMES]
    return candidates


def find_inception_weights(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the first existing Inception weights file, or raise :class:`InceptionWeightsNotFound`.

    An explicit path that does not exist is an error even when a later candidate exists, so a
    typo in a flag never silently falls back to another file.
    """
    candidates = inception_weights_candidates(explicit)
    if explicit is not None and not candidates[0].is_file():
        raise InceptionWeightsNotFound(candidates[:1])
    for path in candidates:
        if path.is_file():
            return path
    raise InceptionWeightsNotFound(candidates)


def state_dict_sha256(state_dict: dict[str, torch.Tensor], length: int = WEIGHTS_HASH_LENGTH) -> str:
    """A content hash of a state dict: names, shapes, dtypes and values, in sorted key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:length]
