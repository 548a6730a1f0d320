"""Timing helpers for side-by-side GPU benchmarks: warm up, CUDA-event timing, medians."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

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


def interleaved_step_seconds(
    steps: dict[str, Callable[[], None]], rounds: int, iters: int = 5
) -> dict[str, list[float]]:
    """Each step's median seconds per round, the steps taking turns round after round, so that
    a machine shared with other work slows them alike (measured one after the other, a side can
    meet a busier minute than the other)."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(median_step_seconds(step, warmup=1, iters=iters))
    return seconds


def interleaved_speedups(
    steps: dict[str, Callable[[], None]], rounds: int, clocks: bool = False
) -> dict[str, dict]:
    """The first step is the baseline: every step's seconds per round (taking turns) and its
    speed against the baseline's in the same round, with the median of those ratios; with
    `clocks`, also each side's median SM clock and power meanwhile (benchmarks/gpu_clocks.py)."""
    if not clocks:
        seconds = interleaved_step_seconds(steps, rounds)
    else:
        from benchmarks.gpu_clocks import ClockSampler

        with ClockSampler() as sampler:
            tagged = {name: sampler.tagged(name, step) for name, step in steps.items()}
            seconds = interleaved_step_seconds(tagged, rounds)
    baseline = next(iter(seconds.values()))
    report = {name: round_speedups(baseline, times) for name, times in seconds.items()}
    if clocks:
        for name, measured in sampler.summary().items():
            report[name]["clock"] = measured
    return report


def print_speedups(report: dict[str, dict], title: str) -> None:
    """A markdown table of `interleaved_speedups`' report: each side's ratio per round and the
    median, and where sampled its clock, power and energy a step (median power × median step
    time: at a power limit, speed follows energy a step)."""
    clocks = any("clock" in side for side in report.values())
    extra = " median SM MHz | median W | J a step |" if clocks else ""
    print(f"{title}:\n| side | × baseline per round | median |{extra}")
    print("|---|---|---|" + ("---|---|---|" if clocks else ""))
    for name, side in report.items():
        per_round = ", ".join(f"{r:.2f}" for r in side["speedups"])
        row = f"| {name} | {per_round} | {side['median_speedup']:.2f} |"
        if clocks:
            clock = side.get("clock", {})
            mhz, watts = (clock.get(key, float("nan")) for key in ("sm_mhz", "watts"))
            joules = watts * statistics.median(side["step_s"])
            row += f" {mhz:.0f} | {watts:.0f} | {joules:.1f} |"
        print(row)


def round_speedups(baseline: list[float], times: list[float]) -> dict:
    """Seconds per round against the baseline's in the same rounds: each round's ratio, and
    their median."""
    ratios = [b / t for b, t in zip(baseline, times, strict=True)]
    return {"step_s": times, "speedups": ratios, "median_speedup": statistics.median(ratios)}


def matmul_peak_flops(n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """The bf16 matmul ceiling measured on this GPU now (the MFU denominator)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    seconds = median_step_seconds(lambda: a @ b, warmup=5, iters=20)
    return 2 * n**3 / seconds


def peak_memory(run: Callable[[], None]) -> tuple[float, float]:
    """GiB at the peak of `run`: allocated, and held by the allocator (reserved), which alone
    counts what a CUDA graph's private pool keeps between replays."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def peak_memory_gib(run: Callable[[], None]) -> float:
    return peak_memory(run)[0]


def save_report(path: str | Path | None, report: dict) -> None:
    """A benchmark's report as JSON at `path` (its `--out`); nothing where no path is given."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
