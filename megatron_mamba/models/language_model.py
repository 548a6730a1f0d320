"""megatron's GPTModel with its training loss from logit_losses.py.

megatron-core computes the loss through its vocab-parallel cross-entropy: a Python autograd
function making several passes over fp32 copies of the logits ([tokens, vocabulary / TP], 1.6 GB
for 8192 tokens of Pythia's vocabulary at TP=1) and keeping them for backward. logit_losses.py
computes the same per-token loss (over the same padded vocabulary, as megatron does) in one
kernel at TP=1 on GPU, in chunks otherwise, and keeps only the gradient, in the logits' dtype.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel

from megatron_mamba.models.logit_losses import LogitLosses


class LanguageModel(GPTModel):
    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor):
        """Per-token loss [b, s] from labels [b, s] and logits [s, b, vocabulary / TP]."""
        group = ps.get_tensor_model_parallel_group()
        padded = logits.shape[-1] * torch.distributed.get_world_size(group)
        loss, _ = LogitLosses.apply(logits, None, labels.t(), padded, 1.0, group)
        return loss.t().contiguous()
