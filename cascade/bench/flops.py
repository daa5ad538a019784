"""Model FLOPs of a step (`torch.utils.flop_counter`) and model FLOPs utilisation (MFU).

FLOPs are those of matrix multiplications, convolutions and attention, forward and backward
(what `FlopCounterMode` counts; element-wise work is left out, as in the usual MFU
definition). MFU = FLOPs per step / (seconds per step * the device's dense bf16 peak).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, which
# quote twice these figures "with sparsity". Matched against torch.cuda.get_device_name() in
# this order (the first substring found wins), so the more specific names come first.
BF16_PEAK_TFLOPS: dict[str, tuple[str, float]] = {
    "H200 NVL": ("H200 NVL", 835.5),
    "H200": ("H200 SXM", 989.4),
    "H100 PCIe": ("H100 PCIe", 756.5),
    "H100 NVL": ("H100 NVL", 835.5),
    "H100": ("H100 SXM", 989.4),
    "A100": ("A100 (SXM or PCIe)", 312.0),
}

_aten = torch.ops.aten



def _as_registered(formula: Callable) -> Callable:
    """A formula from torch's registry (it already takes raw arguments) for `custom_mapping`."""

    def counted(*args, **kwargs):
        return formula(*args, **kwargs)

    counted._get_raw = True
    return counted


# The CPU flash-attention kernel is missing from FlopCounterMode's registry; it computes the
# same products as the CUDA kernels, so it takes the same formulas.
_CPU_ATTENTION_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _as_registered(sdpa_flop),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _as_registered(sdpa_backward_flop),
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (forward and any backward it runs)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


def device_peak(device: torch.device) -> tuple[str, float] | None:
    """(which part, bf16 peak TFLOP/s) of a known CUDA device; None for the CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def mfu(flops_per_step: int, ms_per_step: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation in [0, 1]."""
    return flops_per_step / (ms_per_step / 1000.0) / (peak_tflops * 1e12)
