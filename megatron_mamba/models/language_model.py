"""megatron's GPTModel with its training loss from logit_losses.py.

megatron-core computes the loss through its vocab-parallel cross-entropy: a Python autograd
function making several passes over fp32 copies of the logits ([tokens, vocabulary / TP], 1.6 GB
for 8192 tokens of Pythia's vocabulary at TP=1) and keeping them for backward. logit_losses.py
computes the same per-token loss in one kernel at TP=1 on GPU, in chunks otherwise, and keeps
only the gradient, in the logits' dtype. Unlike megatron's, the loss is over the real vocabulary
only: the columns megatron pads it with for TP grow with the TP size, and counting them would
make the loss of the same weights depend on TP (and differ from transformers' and from our
evaluation's and distillation's).

The output layer is megatron's ColumnParallelLinear made our models/linear.OutputLinear (same
parameters, the product in `F.linear` where it communicates nothing, the logits then laid out
batch-first): GPTModel builds it itself, with no spec to choose its class.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import ColumnParallelLinear

from megatron_mamba.models.linear import OutputLinear
from megatron_mamba.models.logit_losses import LogitLosses


class LanguageModel(GPTModel):
    def __init__(self, *args, real_vocab_size: int, **kwargs):
        """`real_vocab_size`: the model's vocabulary before megatron pads it (`vocab_size`)."""
        super().__init__(*args, **kwargs)
        self.real_vocab_size = real_vocab_size
        if type(getattr(self, "output_layer", None)) is ColumnParallelLinear:
            self.output_layer.__class__ = OutputLinear

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor):
        """Per-token loss [b, s] from labels [b, s] and logits [s, b, padded vocabulary / TP],
        in whichever order the logits are stored (batch-first from OutputLinear)."""
        group = ps.get_tensor_model_parallel_group()
        vocab = self.real_vocab_size
        if logits.transpose(0, 1).is_contiguous():
            return LogitLosses.apply(logits.transpose(0, 1), None, labels, vocab, 1.0, group)[0]
        loss, _ = LogitLosses.apply(logits, None, labels.t(), vocab, 1.0, group)
        return loss.t().contiguous()
