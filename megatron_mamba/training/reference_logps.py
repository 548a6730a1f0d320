"""DPO's reference log-probabilities computed once, before training (TRL's
precompute_ref_log_probs), so that each step runs the policy alone and the reference's weights
can be freed.

Each data-parallel replica takes every dp-th pair of the run's pool through the reference's
pipeline, forward only, in micro-batches of the training's size (the shapes the pipeline
sends); the first tensor-parallel rank of the last stage writes the pairs' log-probabilities
into a table of the whole dataset, and a sum over all ranks gives every rank the whole table.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.data.batches import INPUT_MULTIPLE, padded_length
from megatron_mamba.training.dpo import per_token_ce, sequence_logps


def micro_batches(pool: range, micro: int, dp: int, rank: int) -> list[tuple[torch.Tensor, int]]:
    """Replica `rank`'s pairs as (indices, how many are real): the last micro-batch is filled
    up with repeats, which are not written. Every replica runs as many micro-batches."""
    mine = list(pool)[rank::dp]
    count = -(-len(pool) // (micro * dp))
    batches = []
    for i in range(count):
        chunk = mine[i * micro : (i + 1) * micro]
        real = len(chunk)
        chunk += [mine[-1]] * (micro - real)
        batches.append((torch.tensor(chunk), real))
    return batches


@torch.no_grad()
def reference_logps(reference, data, pool: range, micro: int, seq: int, device) -> torch.Tensor:
    """[len(data), 2] float32: (chosen, rejected) log-probabilities under `reference` of each
    pair in `pool` (zero elsewhere), on every rank."""
    table = torch.zeros(len(data), 2, dtype=torch.float32, device=device)
    writes = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    batches = micro_batches(pool, micro, dp, rank)

    def forward_step(iterator, model):
        indices, real = next(iterator)
        rows = data.rows(indices).to(device).stacked().with_inputs_padded(INPUT_MULTIPLE)
        output = per_token_ce(model, rows)
        if not ps.is_pipeline_last_stage():
            return output, None

        def record(ce):
            # every tensor-parallel rank took part in the vocabulary-parallel log-softmax;
            # [chosen; rejected] → one (chosen, rejected) row per pair
            pairs = sequence_logps(ce, rows.loss_mask).view(2, -1).t()
            if writes:
                table[indices[:real].to(device)] = pairs[:real]
            return ce.new_zeros(()), {}

        return output, record

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=reference,
        num_microbatches=len(batches),
        seq_length=padded_length(seq, INPUT_MULTIPLE),
        micro_batch_size=2 * micro,
        forward_only=True,
    )
    torch.distributed.all_reduce(table)
    return table
