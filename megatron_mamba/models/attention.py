"""A megatron-core attention core on torch's scaled_dot_product_attention.

megatron-core's local `DotProductAttention` builds the full S×S score matrix (and its causal mask
on "cuda"); this core hands Q, K, V to SDPA instead, which dispatches to flash or memory-efficient
kernels on GPU and to the math kernel on CPU. It plugs into megatron's `SelfAttention` through the
layer spec as `core_attention`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAttention(MegatronModule):
    """Causal attention over [s, b, heads, head_dim] inputs; never materialises S×S scores."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        sliding_window: int | None = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(
                f"context_parallel_size={config.context_parallel_size} is not supported by the "
                "SDPA attention core; expected 1"
            )
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(
                f"attention mask type {attn_mask_type} is unsupported; expected causal"
            )
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(head_dim)
        self.dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )
        self.sliding_window = sliding_window

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("packed sequences and attention bias are unsupported by SDPAttention")
        seq_len = query.shape[0]
        if self.sliding_window is not None and seq_len > self.sliding_window:
            raise ValueError(
                f"sequence length {seq_len} exceeds the sliding window {self.sliding_window}, "
                "which the SDPA core does not apply; use sequences no longer than the window"
            )
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        # The model-parallel RNG only where dropout draws from it: switching the CUDA generator's
        # state costs host time and cannot be captured in a CUDA graph.
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout_p else nullcontext()
        with rng:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                dropout_p=dropout_p,
                is_causal=True,
                scale=self.softmax_scale,
                enable_gqa=q.shape[1] != k.shape[1],
            )
        # [b, h, s, d] -> [s, b, h*d]
        b, h, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)
