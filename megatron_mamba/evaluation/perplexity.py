"""Held-out loss and perplexity of a native model under any TP/PP/DP, through megatron's
forward-only pipeline schedule: the standalone evaluation (eval/perplexity.py) and the trainer's
periodic validation.

Each data-parallel replica takes every DP-th window; the last pipeline stage sums token losses,
and the sums travel over the pipeline and data-parallel groups, so every rank returns the same
result. The window count is rounded down to a multiple of micro_batch × DP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.data.held_out import HeldOutWindows
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.models.logit_losses import cross_entropy


@dataclass(frozen=True)
class HeldOutResult:
    loss: float
    """Mean cross-entropy per predicted token (nats)."""
    tokens: int
    windows: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "windows": self.windows,
        }


def _forward_step(vocab_size: int):
    def forward_step(batches, model):
        tokens = next(batches)
        output = model(tokens[:, :-1], None, None)

        def loss_func(logits):
            losses = cross_entropy(logits, tokens[:, 1:], vocab_size)
            total = losses.sum()
            # the schedule scales the returned tensor in place; the record keeps copies
            return total, {"sum": total.detach().clone(), "tokens": losses.numel()}

        return output, loss_func

    return forward_step


def held_out_loss(
    model, windows: HeldOutWindows, vocab_size: int, micro_batch: int, device, chunk: int = 8
) -> HeldOutResult:
    """The model's loss over `windows` (all ranks of the model call this together)."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch}: a micro-batch holds at least one window")
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_round = micro_batch * dp
    used = len(windows) // per_round * per_round
    if used == 0:  # a property of the data set (the CLIs report it as such)
        raise DatasetError(
            f"the held-out set has {len(windows)} windows, fewer than micro_batch × data-parallel "
            f"size = {micro_batch} × {dp}"
        )
    mine = list(range(rank, used, dp))
    micro_batches = [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]
    chunks = [micro_batches[i : i + chunk] for i in range(0, len(micro_batches), chunk)]
    models = model if isinstance(model, list) else [model]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    forward_backward = get_forward_backward_func()
    try:
        with torch.no_grad():
            for group in chunks:
                data = [
                    torch.from_numpy(np.stack([windows[i] for i in rows])).to(device)
                    for rows in group
                ]
                records = forward_backward(
                    forward_step_func=_forward_step(vocab_size),
                    data_iterator=iter(data),
                    model=model,
                    num_microbatches=len(data),
                    seq_length=windows.width - 1,
                    micro_batch_size=micro_batch,
                    forward_only=True,
                )
                for record in records:
                    totals[0] += float(record["sum"])
                    totals[1] += record["tokens"]
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    torch.distributed.all_reduce(totals, group=ps.get_pipeline_model_parallel_group())
    torch.distributed.all_reduce(totals, group=ps.get_data_parallel_group())
    return HeldOutResult(float(totals[0] / totals[1]), int(totals[1]), used)
