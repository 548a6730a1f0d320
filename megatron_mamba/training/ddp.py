"""Wrap a model in megatron's DDP so the schedule finishes every gradient reduction.

megatron's `finalize_model_grads` all-reduces across data-parallel replicas, sums the gradients of
sequence-parallel norm parameters over the TP group, and adds the tied embedding's gradients
across the first and last pipeline stages. Installing it on the config lets
`get_forward_backward_func()` call it at the end of each step.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads


def wrap_ddp(
    model: torch.nn.Module,
    grad_reduce_in_fp32: bool = True,
    use_distributed_optimizer: bool = False,
) -> DistributedDataParallel:
    """DDP over `model` with contiguous gradient buffers (`param.main_grad`; fp32, or the
    parameters' dtype where grad_reduce_in_fp32 is false), reduced in
    buckets that start as soon as backward has filled them (overlapping the data-parallel
    all-reduce with the rest of backward; only on the last micro-batch of a step). For the
    distributed optimizer the buckets are reduce-scattered: each rank keeps its shard's sum."""
    config = model.config
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=grad_reduce_in_fp32,
            overlap_grad_reduce=True,
            use_distributed_optimizer=use_distributed_optimizer,
        ),
        module=model,
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    return ddp
