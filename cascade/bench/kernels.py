"""Which attention kernels `scaled_dot_product_attention` actually dispatched to.

`F.scaled_dot_product_attention` picks a backend per call (flash, memory-efficient, cuDNN, the
CPU flash kernel, or the unfused math path) from the dtype, the device, the head size and
whether a mask is given. The ATen operator it dispatches to names the choice; a dispatch mode
records those operators while the code runs. The math path decomposes into matmuls and a
softmax before a dispatch mode sees it, so attention calls missing from the counts ran there.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_ATTENTION_OPS = {
    _aten._scaled_dot_product_flash_attention: "flash",
    _aten._scaled_dot_product_efficient_attention: "mem_efficient",
    _aten._scaled_dot_product_cudnn_attention: "cudnn",
    _aten._scaled_dot_product_flash_attention_for_cpu: "cpu_flash",
}


class _AttentionRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        backend = _ATTENTION_OPS.get(func.overloadpacket)
        if backend is not None:
            self.counts[backend] += 1
        return func(*args, **(kwargs or {}))


def attention_kernels(fn: Callable[[], object]) -> dict[str, int]:
    """{backend: number of forward calls} of the attention kernels one call of `fn` ran."""
    with _AttentionRecorder() as recorder:
        fn()
    return dict(sorted(recorder.counts.items()))
