"""The real vocabulary inside megatron's padded one.

megatron pads the vocabulary to a multiple of 128 × TP, so the padding depends on the layout.
Log-probabilities over the padded vocabulary would change with TP; objectives that report or
compare them (DPO, distillation, perplexity) set the padded entries to -inf first."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps


def without_padding(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """This TP rank's vocabulary-parallel logits, in fp32, with ids ≥ vocab_size at -inf."""
    local = logits.shape[-1]
    first = ps.get_tensor_model_parallel_rank() * local
    ids = torch.arange(first, first + local, device=logits.device)
    return logits.float().masked_fill(ids >= vocab_size, float("-inf"))
