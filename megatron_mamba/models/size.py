"""Parameter and FLOP counts of a model config, for presets' checks and MFU."""

from __future__ import annotations

from megatron_mamba.config import ModelConfig


def attention_parameters(m: ModelConfig) -> int:
    q = m.num_attention_heads * m.head_dim
    kv = 2 * m.num_query_groups * m.head_dim
    bias = m.arch == "gpt_neox"
    return m.hidden_size * (q + kv) + q * m.hidden_size + (q + kv + m.hidden_size) * bias


def block_parameters(m: ModelConfig) -> int:
    """Norms and MLP of one block (the mixer excluded)."""
    h, f = m.hidden_size, m.ffn_hidden_size
    if m.arch == "gpt_neox":
        return 2 * 2 * h + (h * f + f) + (f * h + h)
    return 2 * h + 3 * h * f


def parameter_count(m: ModelConfig, vocab: int | None = None) -> int:
    """Attention-only parameter count (`vocab` defaults to the unpadded vocabulary)."""
    vocab = vocab or m.vocab_size
    final_norm = 2 * m.hidden_size if m.arch == "gpt_neox" else m.hidden_size
    embeddings = vocab * m.hidden_size * (1 if m.tie_embeddings else 2)
    per_layer = block_parameters(m) + attention_parameters(m)
    return embeddings + m.num_layers * per_layer + final_norm


def _mamba_forward_flops(m: ModelConfig, mixer: str) -> float:
    """Forward FLOPs of one token through a Mamba mixer: its projections and depthwise conv
    (2 per multiply-add) and the recurrent scan per (channel, state) — mamba1: exp(dt·A), dt·B·x,
    the state update and C·h (8); mamba2, whose A is one scalar per head: 6."""
    from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims

    if mixer == "mamba1":
        d = mamba1_dims(m)
        macs = d.d_model * sum(d.in_proj_segments) + d.d_inner * d.d_model
        macs += d.dt_rank * d.d_inner + sum(d.conv_segments) * d.d_conv
        if d.grouped:
            macs += d.d_model * d.dt_rank
        else:
            macs += d.d_inner * (d.dt_rank + 2 * d.d_state)
        return 2 * macs + 8 * d.d_inner * d.d_state
    d = mamba2_dims(m)
    macs = d.d_model * sum(d.in_proj_segments) + d.d_inner * d.d_model
    macs += sum(d.conv_segments) * d.d_conv
    return 2 * macs + 6 * d.d_inner * d.d_state


def training_flops_per_token(m: ModelConfig, seq_length: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3 × forward), per the layer
    pattern: MLPs and the output layer as 2 × parameters; attention's projections plus its
    scores and values (causal: half of S×S); Mamba mixers as `_mamba_forward_flops`."""
    forward = 2 * m.vocab_size * m.hidden_size
    attention_core = 2 * 2 * seq_length * m.num_attention_heads * m.head_dim / 2
    for mixer in m.mixers:
        forward += 2 * block_parameters(m)
        if mixer == "attention":
            forward += 2 * attention_parameters(m) + attention_core
        else:
            forward += _mamba_forward_flops(m, mixer)
    return 3 * forward
