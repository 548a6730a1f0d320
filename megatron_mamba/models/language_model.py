"""megatron's GPTModel with the cross-entropy of an unsplit vocabulary as one torch kernel.

With the vocabulary on one rank (TP=1), megatron-core still computes the loss through its
vocab-parallel cross-entropy: a Python autograd function making several passes over the fp32
logits ([tokens, vocabulary], 1.6 GB for 8192 tokens of Pythia's vocabulary). torch's
`F.cross_entropy` on the same fp32 logits (what transformers computes) gives the same per-token
loss in fewer passes. Under TP the vocab-parallel version stays: it never gathers the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel


class LanguageModel(GPTModel):
    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor):
        """Per-token loss [b, s] from labels [b, s] and logits [s, b, vocabulary]."""
        if self.config.tensor_model_parallel_size > 1:
            return super().compute_language_model_loss(labels, logits)
        seq, batch, vocab = logits.shape
        loss = F.cross_entropy(
            logits.float().view(-1, vocab),
            labels.transpose(0, 1).reshape(-1),
            reduction="none",
            ignore_index=-1,  # megatron's version ignores no label
        )
        return loss.view(seq, batch).transpose(0, 1).contiguous()
