"""Tensor layouts that differ between transformers and megatron: QKV fusion and vocabulary padding.

megatron's fused QKV groups rows as [q…, k, v] per KV group (GPTNeoX's fused QKV already is that
layout per head); megatron pads the vocabulary so every TP rank gets an equal slice.
"""

from __future__ import annotations

import torch

from megatron_mamba.config import ModelConfig


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """Separate q/k/v projections (weight or bias) → megatron's per-group [q…, k, v] layout."""
    groups, d = model.num_query_groups, model.head_dim
    expected = {"q": (q, model.num_attention_heads * d), "k": (k, groups * d), "v": (v, groups * d)}
    for which, (t, rows) in expected.items():
        if t.shape[0] != rows:
            raise ValueError(
                f"{which} has {t.shape[0]} rows; num_attention_heads="
                f"{model.num_attention_heads}, num_query_groups={groups} and head_dim={d} "
                f"give {rows}"
            )
    per_group = model.num_attention_heads // groups
    tail = q.shape[1:]
    q = q.reshape(groups, per_group * d, *tail)
    k = k.reshape(groups, d, *tail)
    v = v.reshape(groups, d, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def pad_vocab(weight: torch.Tensor, vocab_size: int, padded: int) -> torch.Tensor:
    """Zero rows for the padding tokens megatron adds so every TP rank gets an equal slice.
    The rows must be exactly the vocabulary: fewer would leave real tokens at zero, more would
    be cut off by the export."""
    if weight.shape[0] != vocab_size:
        raise ValueError(f"{weight.shape[0]} rows do not match vocab_size={vocab_size}")
    extra = padded - weight.shape[0]
    return torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])]) if extra else weight


def split_qkv(fused: torch.Tensor, model: ModelConfig):
    """megatron's per-group [q…, k, v] rows → q [heads·d], k and v [groups·d] (head-major)."""
    groups, d = model.num_query_groups, model.head_dim
    per_group = model.num_attention_heads // groups
    tail = fused.shape[1:]
    q, k, v = fused.reshape(groups, (per_group + 2) * d, *tail).split([per_group * d, d, d], dim=1)
    return (t.reshape(-1, *tail) for t in (q, k, v))
