"""megatron's GPTModel with the cross-entropy of an unsplit vocabulary computed in chunks.

With the vocabulary on one rank (TP=1), megatron-core still computes the loss through its
vocab-parallel cross-entropy: a Python autograd function making several passes over the fp32
logits ([tokens, vocabulary], 1.6 GB for 8192 tokens of Pythia's vocabulary) and keeping fp32
copies for backward. logit_losses.py computes the same per-token loss chunk by chunk and keeps
only the gradient, in the logits' dtype. Under TP the vocab-parallel version stays: it never
gathers the logits.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel

from megatron_mamba.models.logit_losses import LocalLogitLosses


class LanguageModel(GPTModel):
    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor):
        """Per-token loss [b, s] from labels [b, s] and logits [s, b, vocabulary]."""
        if self.config.tensor_model_parallel_size > 1:
            return super().compute_language_model_loss(labels, logits)
        # the whole padded vocabulary, as megatron's version (-1 labels carry no loss)
        loss, _ = LocalLogitLosses.apply(logits, None, labels.t(), logits.shape[-1], 1.0)
        return loss.t().contiguous()
