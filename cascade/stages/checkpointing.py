"""Keeping a run's work: checkpoint files that are never half written.

`AtomicCheckpointIO` is the checkpoint writer `cascade fit` gives every Trainer: each checkpoint
(last.ckpt, best-<step>.ckpt, an hpc or interrupt checkpoint) goes to a temporary file next to
it and is renamed over the target (`cascade.files.atomic`), so a run killed while saving leaves
the previous last.ckpt whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..files.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, publishing each local file atomically (temporary file,
    fsync, rename); remote paths (`s3://...`) are written as Lightning writes them."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
