"""Where the code runs: distributed init, parallel state, seeds, device, the CPU layer."""

from megatron_mamba.runtime.cpu_compat import apply_cpu_compat
from megatron_mamba.runtime.distributed import (
    ParallelSizes,
    Runtime,
    init_runtime,
    pick_device,
    shutdown_runtime,
)
from megatron_mamba.runtime.seed import seed_everything

__all__ = [
    "ParallelSizes",
    "Runtime",
    "apply_cpu_compat",
    "init_runtime",
    "pick_device",
    "seed_everything",
    "shutdown_runtime",
]
