"""Timing helpers for side-by-side GPU benchmarks: warm up, CUDA-event timing, medians."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def median_step_seconds(step: Callable[[], None], warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def matmul_peak_flops(n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """The bf16 matmul ceiling measured on this GPU now (the MFU denominator)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    seconds = median_step_seconds(lambda: a @ b, warmup=5, iters=20)
    return 2 * n**3 / seconds


def peak_memory_gib(run: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def peak_reserved_gib(run: Callable[[], None]) -> float:
    """What the allocator holds at the peak of `run`, the memory a CUDA graph's private pool
    keeps between replays included (`max_memory_allocated` leaves out its freed blocks)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_reserved() / 2**30
