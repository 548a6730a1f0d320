"""One entry point that brings up torch.distributed and megatron-core's parallel state.

It picks the backend from the hardware (nccl with CUDA, gloo without), applies the CPU
compatibility layer where CUDA is absent, and seeds every RNG, so the same training code runs
under `torchrun` on a laptop CPU and on a GPU node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_mamba.runtime.cpu_compat import apply_cpu_compat
from megatron_mamba.runtime.seed import seed_everything


@dataclass(frozen=True)
class ParallelSizes:
    """How the world is split. The data-parallel size is what remains of the world."""

    tensor: int = 1
    pipeline: int = 1

    def __post_init__(self) -> None:
        for name, value in (("tensor", self.tensor), ("pipeline", self.pipeline)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}-parallel size must be a positive integer, got {value!r}")

    def data_parallel_size(self, world_size: int) -> int:
        model_parallel = self.tensor * self.pipeline
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor×pipeline parallel size "
                f"{self.tensor}×{self.pipeline}={model_parallel}"
            )
        return world_size // model_parallel


@dataclass(frozen=True)
class Runtime:
    """What the rest of the code needs to know about where it runs."""

    device: torch.device
    backend: str
    rank: int
    world_size: int
    data_parallel_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes what all share."""
        return self.rank == 0


def _local_rank() -> int:
    """LOCAL_RANK as a GPU index: more processes per node than GPUs would otherwise fail deep in
    CUDA ("invalid device ordinal"), or all share one GPU."""
    value = os.environ.get("LOCAL_RANK", "0")
    count = torch.cuda.device_count()
    if not value.isdigit() or int(value) >= count:
        raise RuntimeError(
            f"LOCAL_RANK={value!r} names no GPU of the {count} on this node; start at most "
            f"{count} processes per node (torchrun --nproc-per-node)"
        )
    return int(value)


def pick_device() -> torch.device:
    """The local GPU chosen by LOCAL_RANK when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        local_rank = _local_rank()
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _single_process_env() -> None:
    """Lets `python script.py` run as a world of one, without torchrun."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def init_runtime(
    sizes: ParallelSizes | None = None, seed: int = 1234, timeout_minutes: int = 30
) -> Runtime:
    """Initialise torch.distributed, megatron's parallel state and all RNGs; idempotent for the
    same sizes (other sizes are refused: megatron's groups stay as first made until
    `shutdown_runtime`)."""
    from megatron.core import parallel_state

    sizes = sizes or ParallelSizes()
    device = pick_device()
    if device.type == "cpu":
        apply_cpu_compat()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        _single_process_env()
        dist.init_process_group(
            backend=backend,
            timeout=timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
    world_size = dist.get_world_size()
    dp = sizes.data_parallel_size(world_size)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=sizes.tensor,
            pipeline_model_parallel_size=sizes.pipeline,
            distributed_timeout_minutes=timeout_minutes,
        )
    existing = (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(),
    )
    if existing != (sizes.tensor, sizes.pipeline):
        raise RuntimeError(
            f"the runtime is already initialised with tensor × pipeline = {existing[0]} × "
            f"{existing[1]}; {sizes.tensor} × {sizes.pipeline} needs shutdown_runtime() first"
        )
    seed_everything(seed)
    return Runtime(
        device=device,
        backend=backend,
        rank=dist.get_rank(),
        world_size=world_size,
        data_parallel_size=dp,
    )


def shutdown_runtime() -> None:
    """Tear down megatron's groups and the process group, so a process can start another."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
