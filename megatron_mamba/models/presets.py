"""Named model shapes matching the released checkpoints, plus tiny shapes for tests.

Numbers are copied from each model's published config.json; tests check the resulting parameter
counts against the published totals.
"""

from __future__ import annotations

from typing import Any

from megatron_mamba.config import ModelConfig
from megatron_mamba.config_io import ConfigError


def _pythia(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return dict(
        arch="gpt_neox",
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        ffn_hidden_size=4 * hidden,
        vocab_size=50304,
        max_position_embeddings=2048,
        rotary_percent=0.25,
        rotary_base=10000.0,
        parallel_residual=True,
        norm_eps=1e-5,
    )


_LLAMA3 = dict(arch="llama", vocab_size=128256, rotary_base=500000.0, norm_eps=1e-5)

PRESETS: dict[str, dict[str, Any]] = {
    "pythia-70m": _pythia(6, 512, 8),
    "pythia-160m": _pythia(12, 768, 12),
    "pythia-410m": _pythia(24, 1024, 16),
    "pythia-1b": _pythia(16, 2048, 8),
    "pythia-1.4b": _pythia(24, 2048, 16),
    "pythia-2.8b": _pythia(32, 2560, 32),
    "llama-3.2-1b": dict(
        _LLAMA3,
        num_layers=16,
        hidden_size=2048,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=8192,
        max_position_embeddings=131072,
        rope_scaling_factor=32.0,
        tie_embeddings=True,
    ),
    "llama-3-8b": dict(
        _LLAMA3,
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=14336,
        max_position_embeddings=8192,
    ),
    "mistral-7b-v0.1": dict(
        arch="llama",
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=14336,
        vocab_size=32000,
        max_position_embeddings=32768,
        rotary_base=10000.0,
        norm_eps=1e-5,
        sliding_window=4096,
    ),
    "tiny-gpt-neox": dict(
        arch="gpt_neox",
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=256,
        vocab_size=256,
        max_position_embeddings=128,
        rotary_percent=0.25,
    ),
    "tiny-llama": dict(
        arch="llama",
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
        vocab_size=256,
        max_position_embeddings=128,
    ),
}


def preset_fields(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The named preset's ModelConfig fields with `overrides` over them; a `mamba` mapping is
    merged key by key. Unbuilt, so that a run config can type-check the result."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is unknown; known presets: {', '.join(PRESETS)}")
    fields = {**PRESETS[name], **overrides}
    base, mamba = PRESETS[name].get("mamba"), overrides.get("mamba")
    if isinstance(base, dict) and isinstance(mamba, dict):
        fields["mamba"] = {**base, **mamba}
    return fields


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named shape, with any field overridden (e.g. layer_pattern)."""
    return ModelConfig(**preset_fields(name, overrides))
