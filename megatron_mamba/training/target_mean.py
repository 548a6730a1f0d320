"""A masked loss as the mean over every target of the global batch, not a mean of means.

With a loss mask (SFT: assistant tokens only) micro-batches hold different numbers of targets.
A mean of per-micro-batch means weights a target of a short answer more than one of a long
answer, and changes with how the global batch is split into micro-batches and data-parallel
replicas (the gradient-accumulation bug transformers fixed in 4.46 with `num_items_in_batch`;
TRL's SFT and so alignment-handbook's recipes average over the global batch's tokens). Here a
micro-batch's loss is its sum over targets × (micro-batches × replicas) / (targets of the whole
global batch): megatron's schedule divides by the micro-batches and DDP averages over replicas,
so the step's loss and gradient are exactly the mean over all of its targets.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_mamba.data.batches import TokenBatch


class GlobalTargetMean:
    def __init__(self, device: torch.device):
        self.device = device
        self.factor: torch.Tensor | None = None
        """On the device and updated in place, so that a CUDA graph of the loss reads each
        step's value (training/cuda_graph.py); None where every target carries loss."""

    def begin_step(self, batch: TokenBatch | None, accumulation: int) -> None:
        """Count the step's targets (this replica's `batch`, summed over replicas). Without a
        loss mask every micro-batch holds as many targets, and each one's mean is already its
        share."""
        if batch is None or batch.loss_mask is None:
            self.factor = None
            return
        count = torch.tensor([batch.target_count()], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(count, group=ps.get_data_parallel_group())
        replicas = ps.get_data_parallel_world_size()
        factor = accumulation * replicas / max(float(count), 1.0)
        if self.factor is None:
            self.factor = torch.tensor(factor, dtype=torch.float32, device=self.device)
        else:
            self.factor.fill_(factor)

    def __call__(self, batch: TokenBatch, per_token: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the step's mean of `per_token` [n, L−1]."""
        if self.factor is None:
            return batch.masked_mean(per_token)
        return batch.masked_sum(per_token) * self.factor
