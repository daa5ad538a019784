"""The one timing harness of every benchmark: warm-up calls, then the median of N timed calls.

On CUDA every timed call is bracketed by `torch.cuda.synchronize()`, so a time covers the
GPU work the call queued, not only its launch. Several callables can be timed interleaved
(A, B, A, B, ...) so that load from other processes on a shared machine hits all of them
alike and their ratio stays meaningful.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    """Wall times in milliseconds of the warm-up calls and of the timed calls."""

    warmup_ms: list[float]
    times_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def first_call_ms(self) -> float | None:
        """The very first call (includes one-off costs such as torch.compile)."""
        return self.warmup_ms[0] if self.warmup_ms else None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of `fn`, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def measure(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Timing:
    """`warmup` untimed-for-the-median calls, then `iters` timed calls of `fn`."""
    return measure_interleaved({"only": fn}, device, warmup, iters)["only"]


def measure_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, iters: int
) -> dict[str, Timing]:
    """Time several callables round-robin: each warm-up round and each timed round calls every
    function once, in order, so slow phases of a shared machine affect them all alike."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    timings = {name: Timing([], []) for name in fns}
    for _ in range(warmup):
        for name, fn in fns.items():
            timings[name].warmup_ms.append(time_call(fn, device))
    for _ in range(iters):
        for name, fn in fns.items():
            timings[name].times_ms.append(time_call(fn, device))
    return timings


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured): the CUDA caching allocator's peak since the last reset, or on
    CPU the process's peak resident set size since it started (it never goes down, so on CPU it
    is an upper bound that includes everything the process did before)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
