"""One profiled step (torch.profiler), reported three ways: the top kernels, GPU time by kind of
kernel, and the operators that launched them grouped by input shape, which is where a slow
layout or an unexpected batched product shows (benchmarks/RESULTS.md, DPO section)."""

from __future__ import annotations

import cProfile
import json
import pstats
import re
from collections.abc import Callable
from unittest import mock

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

KERNEL_KINDS = (  # (kind, pattern in the kernel's name), first match wins
    ("gemm", r"nvjet|gemm|cutlass|sm90_xmma"),
    ("selective_scan_fwd", r"selective_scan_fwd"),
    ("selective_scan_bwd", r"selective_scan_bwd|scan_backward_kernel"),
    ("conv", r"causal_conv1d"),
    ("attention", r"sdpa|flash|fmha|cudnn"),
    ("copy_or_cat", r"direct_copy|CatArray|copy_kernel|bfloat16_copy"),
    ("strided_elementwise", r"elementwise_kernel<128"),
    ("norm", r"layer_norm|LayerNorm|GammaBeta|rms"),
    ("logit_losses", r"logit|_losses"),
    ("adam", r"adam|Adam"),
    ("reduce", r"reduce_kernel|norm"),
    ("elementwise", r"elementwise"),
)


def kernel_kinds(kernels) -> dict[str, float]:
    """CUDA ms per kind of kernel (KERNEL_KINDS), the rest as "other"."""
    kinds: dict[str, float] = {}
    for kernel in kernels:
        kind = next((k for k, p in KERNEL_KINDS if re.search(p, kernel.key)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + kernel.self_device_time_total / 1000
    return {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def profile_step(name: str, step: Callable[[], None], rows: int, by_shape: bool = True) -> dict:
    """Warm `step` up, profile one run and print its report; returns its CUDA ms, total and by
    kind. `by_shape`: also the operators by input shape (none run in a replayed CUDA graph)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(
        activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], record_shapes=by_shape
    ) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in kernels) / 1000
    kinds = kernel_kinds(kernels)
    print(f"=== {name}: CUDA time {total:.1f} ms")
    print(events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70))
    print(f"{name} by kind of kernel (ms): " + json.dumps(kinds))
    idle = print_idle_gaps(name, prof.events(), rows)
    if by_shape:
        ops = [e for e in prof.key_averages(group_by_input_shape=True)]
        ops = sorted((e for e in ops if e.device_type == DeviceType.CPU), key=_device_ms)[::-1]
        for e in ops[:rows]:
            shapes = str(e.input_shapes)[:150]
            print(f"{_device_ms(e):8.3f} ms {e.count:5d}× {e.key[:40]:40s} {shapes}")
    return {"cuda_ms": total, "kinds": kinds, "idle_ms": idle}


def print_idle_gaps(name: str, events, rows: int, at_least_us: float = 20.0) -> float:
    """Where the GPU waited inside the step: the idle time between its first and last kernel,
    and the longest gaps with the kernels either side (a gap is the host launching late)."""
    kernels = sorted(
        (e for e in events if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start
    )
    gaps, busy_until = [], None
    for before, after in zip(kernels, kernels[1:], strict=False):
        busy_until = max(busy_until or 0, before.time_range.end)
        gap = after.time_range.start - busy_until
        if gap >= at_least_us:
            gaps.append((gap, before.name, after.name))
    idle = sum(g for g, _, _ in gaps) / 1000
    print(f"{name}: GPU idle {idle:.2f} ms in gaps of >= {at_least_us:.0f} us ({len(gaps)} gaps)")
    for gap, before, after in sorted(gaps, reverse=True)[: max(rows // 4, 5)]:
        print(f"  {gap / 1000:7.3f} ms after {before[:50]:50s} before {after[:50]}")
    return round(idle, 2)


def _device_ms(event) -> float:
    return event.self_device_time_total / 1000


def host_profiled(owner, method: str, rows: int):
    """A block within which each call of `owner.method` runs under cProfile after the GPU has
    caught up, and prints its Python time by function: what the host does while the GPU waits
    for its next launch (a gap after a host sync)."""
    original = getattr(owner, method)

    def profiled(*args, **kwargs):
        torch.cuda.synchronize()
        profiler = cProfile.Profile()
        result = profiler.runcall(original, *args, **kwargs)
        print(f"=== host time in {type(owner).__name__}.{method}")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(rows)
        return result

    return mock.patch.object(owner, method, profiled)
