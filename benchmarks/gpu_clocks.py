"""The GPU's SM clock and board power while each side of a benchmark runs, sampled by nvidia-smi.

Kernels that both sides run (the same GEMMs, cuDNN's attention, torch's GeLU) have timed a few
percent slower a call inside our denser step than inside transformers' (benchmarks/RESULTS.md),
as if the clock were lower under a power limit. This measures it: nvidia-smi prints the clock
and power every `period_ms` in the background, each sample stamped when it arrives, and each is
given to the side whose step began last (the benchmarks synchronise after every step, so steps
do not overlap).

    with ClockSampler() as clocks:
        steps = {name: clocks.tagged(name, step) for name, step in steps.items()}
        ...  # time them
    clocks.summary()  # {side: {"sm_mhz": median, "watts": median, "samples": n}}

benchmarks/common.interleaved_speedups(..., clocks=True) does this for the benchmarks' rounds.
"""

from __future__ import annotations

import bisect
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable


def attribute(
    tags: list[tuple[float, str]], samples: list[tuple[float, float, float]]
) -> dict[str, dict[str, float]]:
    """Median SM clock and power per side: each (time, MHz, watts) sample goes to the side of the
    last (time, side) tag at or before it; samples before the first tag go to none."""
    times = [t for t, _ in tags]
    by_side: dict[str, list[tuple[float, float]]] = {}
    for when, mhz, watts in samples:
        index = bisect.bisect_right(times, when) - 1
        if index >= 0:
            by_side.setdefault(tags[index][1], []).append((mhz, watts))
    return {
        side: {
            "sm_mhz": statistics.median(m for m, _ in values),
            "watts": statistics.median(w for _, w in values),
            "samples": len(values),
        }
        for side, values in by_side.items()
    }


class ClockSampler:
    def __init__(self, period_ms: int = 20, gpu: int | None = None):
        if shutil.which("nvidia-smi") is None:
            raise RuntimeError("ClockSampler needs nvidia-smi on PATH; none was found")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        self.gpu = str(gpu) if gpu is not None else visible
        self.period_ms = period_ms
        self.tags: list[tuple[float, str]] = []
        self.samples: list[tuple[float, float, float]] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> ClockSampler:
        command = [
            "nvidia-smi",
            f"--id={self.gpu}",
            "--query-gpu=clocks.sm,power.draw",
            "--format=csv,noheader,nounits",
            f"-lms={self.period_ms}",
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            fields = [f.strip() for f in line.split(",")]
            try:
                mhz, watts = float(fields[0]), float(fields[1])
            except (ValueError, IndexError):
                continue  # "[N/A]" or a partial line
            self.samples.append((time.monotonic(), mhz, watts))

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self._process.wait()
        self._reader.join(timeout=5)

    def tagged(self, side: str, step: Callable[[], None]) -> Callable[[], None]:
        """`step`, noting when each call begins as `side`'s."""

        def run() -> None:
            self.tags.append((time.monotonic(), side))
            step()

        return run

    def summary(self) -> dict[str, dict[str, float]]:
        return attribute(self.tags, list(self.samples))
