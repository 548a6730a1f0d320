"""Queries' and keys' rotary embedding by the Triton kernel (kernels/rope.py) on GPU, where
megatron-core without Transformer Engine runs its unfused torch version: some eight kernels per
tensor each way.

`use_rope_kernel()` points megatron's SelfAttention at `apply_rotary_pos_emb` below. It takes the
kernel for what the kernel covers (CUDA tensors [s, b, heads, head_dim], angles [s, 1, 1, r],
rotate-half, no mscale, no packed sequences) and megatron's own function for everything else
(and everywhere with MEGATRON_MAMBA_REFERENCE_KERNELS=1).
"""

from __future__ import annotations

from megatron.core.transformer import attention as megatron_attention

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


def use_rope_kernel() -> None:
    """Route megatron's SelfAttention through `apply_rotary_pos_emb` (idempotent)."""
    megatron_attention.apply_rotary_pos_emb = apply_rotary_pos_emb
