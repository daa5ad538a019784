"""Host syncs counted on any device: every point where the host waits for a tensor's value.

On CUDA, `torch.cuda.set_sync_debug_mode` warns at synchronising calls; the CPU has no such
mode, and the development machines have no GPU. `count_host_syncs` is the device-independent
equivalent: a dispatch mode sees every operator that needs a tensor's value on the host,

- `aten._local_scalar_dense`: what `.item()`, `float(t)`, `int(t)`, `bool(t)` (an `if t:` or
  `if (t > 0).any():`) and formatting a tensor run, from Python or from C++;
- the operators whose output shape depends on the data (`nonzero`, `masked_select`, indexing
  with a boolean mask, `unique`), which must read the data to size their result;

and `Tensor.tolist`, `Tensor.numpy` and `Tensor.cpu` are wrapped, since on a CPU tensor they
read memory without any operator. Each sync is recorded with the first frame outside torch
that caused it, so a count comes with the lines to fix.

`SyncsPerStep` (a Lightning callback) splits the syncs of a `Trainer.fit` by training batch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# Operators that read a tensor's data on the host: the scalar read, and data-dependent shapes.
SYNCING_OPS = {
    _aten._local_scalar_dense: "item",
    _aten.nonzero: "nonzero",
    _aten.masked_select: "masked_select",
    _aten._unique2: "unique",
    _aten.unique_dim: "unique",
    _aten.unique_consecutive: "unique",
}
# Indexing with a boolean mask (x[mask], x[mask] = v) runs `nonzero` inside the operator.
_INDEXING_OPS = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}
# Tensor methods that read data without dispatching an operator on a CPU tensor.
WRAPPED_METHODS = ("tolist", "numpy", "cpu")
_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__)


@dataclass(frozen=True)
class HostSync:
    """One host sync: what read the data (`item`, `nonzero`, `tolist`, ...) and the first frame
    outside torch that asked for it ("path:line in function")."""

    kind: str
    where: str


@dataclass
class HostSyncCounter:
    """The host syncs seen so far, in order."""

    syncs: list[HostSync] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.syncs)

    def since(self, start: int) -> list[HostSync]:
        """The syncs after the first `start` ones."""
        return self.syncs[start:]

    def summary(self, syncs: list[HostSync] | None = None) -> str:
        """One line per distinct place: "N x kind at where"."""
        counts = Counter(self.syncs if syncs is None else syncs)
        return "\n".join(f"{n} x {sync.kind} at {sync.where}" for sync, n in counts.most_common())


def _has_mask(args: tuple) -> bool:
    """Whether an indexing operator's index list holds a boolean (or byte) mask."""
    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _caller() -> str:
    """The innermost frame that is neither torch's nor this module's."""
    for frame in reversed(traceback.extract_stack()):
        filename = os.path.abspath(frame.filename)
        if filename == _THIS_FILE or filename.startswith(_TORCH_DIR):
            continue
        return f"{_short_path(filename)}:{frame.lineno} in {frame.name}"
    return "unknown"


def _short_path(path: str) -> str:
    marker = f"{os.sep}site-packages{os.sep}"
    if marker in path:
        return path.split(marker, 1)[1]
    for package in ("cascade", "tests"):
        part = f"{os.sep}{package}{os.sep}"
        if part in path:
            return package + os.sep + path.rsplit(part, 1)[1]
    return path


class _SyncRecorder(TorchDispatchMode):
    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = SYNCING_OPS.get(func.overloadpacket)
        if kind is None and func.overloadpacket in _INDEXING_OPS and _has_mask(args):
            kind = "boolean_index"
        if kind is not None:
            self.counter.syncs.append(HostSync(kind, _caller()))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Record every host sync of the code run inside (see the module docstring)."""
    counter = HostSyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in WRAPPED_METHODS}
    inside_wrapper = [False]

    def wrap(name: str, method):
        @functools.wraps(method)
        def reading(self, *args, **kwargs):
            # counted on every device (on the CPU none of them waits, but on a GPU each would);
            # a wrapped method calling another (tolist -> cpu) counts once.
            if not inside_wrapper[0]:
                counter.syncs.append(HostSync(name, _caller()))
            previous, inside_wrapper[0] = inside_wrapper[0], True
            try:
                return method(self, *args, **kwargs)
            finally:
                inside_wrapper[0] = previous

        return reading

    for name, method in originals.items():
        setattr(torch.Tensor, name, wrap(name, method))
    try:
        with _SyncRecorder(counter):
            yield counter
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


class SyncsPerStep(pl.Callback):
    """The host syncs of each training batch of a `Trainer.fit` run under `count_host_syncs`.

    Batch i's syncs are those from its `on_train_batch_start` to the next batch's (or the end
    of training): its step, its `on_train_batch_end` hooks (callbacks' and the module's), the
    loggers' update after it, and fetching the next batch. `by_step[s]` holds the syncs of the
    batch after which the global step became s.
    """

    def __init__(self, counter: HostSyncCounter):
        self.counter = counter
        self.by_step: dict[int, list[HostSync]] = {}
        self._open: tuple[int, int] | None = None  # (global step at batch start, sync count)

    def _close(self, trainer: pl.Trainer) -> None:
        if self._open is not None:
            _, start = self._open
            self.by_step[trainer.global_step] = self.counter.since(start)
            self._open = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._close(trainer)
        self._open = (trainer.global_step, self.counter.count)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer)
