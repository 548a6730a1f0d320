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


def training_flops_per_token(m: ModelConfig, seq_length: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3 × forward), attention-only:
    6 × (matmul parameters) plus the attention scores and values (causal: half of S×S)."""
    matmul = m.num_layers * (block_parameters(m) + attention_parameters(m))
    matmul += m.vocab_size * m.hidden_size
    attention = m.num_layers * 2 * 2 * seq_length * m.num_attention_heads * m.head_dim / 2
    return 6 * matmul + 3 * attention
