"""Queries' and keys' rotary embedding by the Triton kernel (kernels/rope.py) on GPU, where
megatron-core without Transformer Engine runs its unfused torch version: some eight kernels per
tensor each way.

`use_rope_kernel()` points megatron's SelfAttention at `apply_rotary_pos_emb` below. It takes the
kernel for what the kernel covers (CUDA tensors [s, b, heads, head_dim], angles [s, 1, 1, r],
rotate-half, no mscale, no packed sequences) and megatron's own function for everything else
(and everywhere with MEGATRON_MAMBA_REFERENCE_KERNELS=1).

It also gives megatron's "fused single QKV RoPE" hook (`fused_single_qkv_rope`, otherwise
Transformer Engine's) our `apply_fused_qkv_rotary_pos_emb`: the fused QKV output rotated and
split in one function whose backward assembles its gradient without a `cat`
(kernels/rope.qkv_rope). The model builder turns the hook on where megatron would call it with
what that function covers (`fused_qkv_rope_applies`).
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer import attention as megatron_attention
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels

_MEGATRONS = megatron_attention.apply_rotary_pos_emb


def apply_rotary_pos_emb(t, freqs, config, cu_seqlens=None, mscale=1.0, cp_group=None):
    """megatron's `apply_rotary_pos_emb`, through the kernel where it applies."""
    kernel = kernels.triton_rope(t)
    if (
        kernel is not None
        and cu_seqlens is None
        and mscale == 1.0
        and not config.rotary_interleaved
        and not config.multi_latent_attention
        and not config.apply_rope_fusion
        and t.dim() == 4
        and freqs.shape == (t.shape[0], 1, 1, freqs.shape[-1])
    ):
        return kernel(t, freqs)
    return _MEGATRONS(t, freqs, config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group)


def apply_fused_qkv_rotary_pos_emb(mixed_qkv, q_freqs, k_freqs, split_sizes):
    """megatron's fused QKV [s, b, groups, (q heads per group + 2) · head_dim] as rotated
    queries [s, b, heads, head_dim], rotated keys and the values' view, as its split path
    followed by `apply_rotary_pos_emb` gives them (rotate-half, no mscale: what
    `fused_qkv_rope_applies` admits)."""
    q_width, head_dim, _ = split_sizes
    per_group = q_width // head_dim
    kernel = kernels.triton_qkv_rope(mixed_qkv)
    angles_per_position = q_freqs.shape == (mixed_qkv.shape[0], 1, 1, q_freqs.shape[-1])
    if kernel is not None and q_freqs is k_freqs and angles_per_position:
        return kernel(mixed_qkv, q_freqs, per_group)
    query, key, value = torch.split(mixed_qkv, split_sizes, dim=3)
    query = query.reshape(*query.shape[:2], -1, head_dim)
    rotate = _apply_rotary_pos_emb_bshd
    return rotate(query, q_freqs), rotate(key, k_freqs), value


def fused_qkv_rope_applies(config: TransformerConfig) -> bool:
    """Whether megatron's SelfAttention may hand RoPE to `apply_fused_qkv_rotary_pos_emb`:
    rotate-half RoPE without scaling, every rank holding whole query groups, no gated output.
    (megatron takes that path only without an inference context and without packed sequences,
    and asserts otherwise: MixerBlock accepts neither.)"""
    return (
        config.num_query_groups >= config.tensor_model_parallel_size
        and not config.rotary_interleaved
        and not config.multi_latent_attention
        and not config.apply_rope_fusion
        and not config.attention_output_gate
        and _yarn_get_concentration_factor_from_config(config) == 1.0  # megatron's mscale
    )


def use_rope_kernel() -> None:
    """Route megatron's SelfAttention through `apply_rotary_pos_emb` and, where a config asks
    for it, `apply_fused_qkv_rotary_pos_emb` (idempotent)."""
    megatron_attention.apply_rotary_pos_emb = apply_rotary_pos_emb
    megatron_attention.apply_fused_qkv_rotary_pos_emb = apply_fused_qkv_rotary_pos_emb
    megatron_attention.HAVE_FUSED_QKV_ROPE = True
