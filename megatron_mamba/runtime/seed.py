"""Reproducible seeding of every RNG the training touches."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch (CPU and CUDA) and megatron's per-role RNG tracker.

    Every rank seeds the CPU generator with the same value, so weights built with
    `use_cpu_initialization` are identical full tensors before being split across TP ranks;
    megatron's tracker then gives tensor-parallel regions (dropout) a per-TP-rank stream.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if parallel_state.model_parallel_is_initialized():
        model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
