"""Our ModelConfig from a transformers config (GPTNeoX, Llama, Mistral, or their hybrids), old or
new style, and back.

transformers 5 moved RoPE settings into `rope_parameters`; older configs carry `rotary_pct`,
`rotary_emb_base`, `rope_theta` and `rope_scaling`. Both are read; the new style is written.
"""

from __future__ import annotations

from typing import Any

from megatron_mamba.config import MambaConfig, ModelConfig
from megatron_mamba.config_io import build, to_dict

_LLAMA3_DEFAULTS = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _rope(hf: Any) -> dict[str, Any]:
    params = dict(getattr(hf, "rope_parameters", None) or {})
    scaling = getattr(hf, "rope_scaling", None) or {}
    params = {**scaling, **params}
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(hf, "rope_theta", getattr(hf, "rotary_emb_base", 10000.0))
    if "partial_rotary_factor" not in params:
        params["partial_rotary_factor"] = getattr(hf, "rotary_pct", 1.0)
    return params


def _rope_scaling_factor(params: dict[str, Any]) -> float | None:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ValueError(f"RoPE scaling type {kind!r} is unsupported; expected default or llama3")
    for key, expected in _LLAMA3_DEFAULTS.items():
        if float(params.get(key, expected)) != float(expected):
            raise ValueError(f"llama3 RoPE {key}={params[key]} is unsupported; expected {expected}")
    return float(params["factor"])


_ACTIVATIONS = {"gpt_neox": "gelu", "llama": "silu", "mistral": "silu"}
"""The one MLP activation each native architecture computes (exact GeLU; SiLU in SwiGLU)."""


def _check_activation(kind: str, hf: Any) -> None:
    """Refuse any other activation: the native model would silently compute a different one."""
    act = getattr(hf, "hidden_act", _ACTIVATIONS[kind])
    if act != _ACTIVATIONS[kind]:
        raise ValueError(
            f"{kind} with hidden_act={act!r} is unsupported; expected {_ACTIVATIONS[kind]!r}"
        )


def model_config_from_hf(hf: Any, **overrides: Any) -> ModelConfig:
    """Translate a transformers config; `overrides` (e.g. layer_pattern) win."""
    kind = hf.model_type
    if kind.endswith("_hybrid"):  # our hybrids: the base architecture plus pattern and mixers
        kind = kind.removesuffix("_hybrid")
        hybrid = {"layer_pattern": hf.layer_pattern}
        hybrid["mamba"] = build(MambaConfig, dict(hf.mamba or {}), "mamba")
        overrides = {**hybrid, **overrides}
    if kind in _ACTIVATIONS:
        _check_activation(kind, hf)
    rope = _rope(hf)
    common = dict(
        num_layers=hf.num_hidden_layers,
        hidden_size=hf.hidden_size,
        num_attention_heads=hf.num_attention_heads,
        ffn_hidden_size=hf.intermediate_size,
        vocab_size=hf.vocab_size,
        max_position_embeddings=hf.max_position_embeddings,
        rotary_base=float(rope["rope_theta"]),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
    )
    if kind == "gpt_neox":
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in (None, "default"):  # the native GPTNeoX has no RoPE scaling
            raise ValueError(
                f"gpt_neox RoPE scaling type {rope_type!r} is unsupported; expected default"
            )
        if not getattr(hf, "attention_bias", True):
            raise ValueError("gpt_neox with attention_bias=False is unsupported; expected True")
        config = dict(
            common,
            arch="gpt_neox",
            norm_eps=hf.layer_norm_eps,
            rotary_percent=float(rope["partial_rotary_factor"]),
            parallel_residual=hf.use_parallel_residual,
        )
    elif kind in ("llama", "mistral"):
        config = dict(
            common,
            arch="llama",
            num_query_groups=hf.num_key_value_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
            norm_eps=hf.rms_norm_eps,
            rope_scaling_factor=_rope_scaling_factor(rope),
            sliding_window=getattr(hf, "sliding_window", None) if kind == "mistral" else None,
        )
        if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
            raise ValueError(f"{kind} with attention_bias/mlp_bias is unsupported; expected none")
    else:
        raise ValueError(f"model_type {kind!r} is unsupported; expected gpt_neox, llama, mistral")
    config.update(overrides)
    return ModelConfig(**config)


def _rope_parameters(model: ModelConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": model.rotary_base}
    if model.rope_scaling_factor is not None:
        params.update(_LLAMA3_DEFAULTS, rope_type="llama3", factor=model.rope_scaling_factor)
    if model.arch == "gpt_neox":
        params["partial_rotary_factor"] = model.rotary_percent
    return params


def hf_model_type(model: ModelConfig) -> str:
    """transformers' architecture: GPTNeoX, or Mistral for a sliding-window Llama."""
    if model.arch == "gpt_neox":
        return "gpt_neox"
    return "mistral" if model.sliding_window is not None else "llama"


def hf_config_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The transformers config fields describing `model` (without its Mamba layers)."""
    common = dict(
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        intermediate_size=model.ffn_hidden_size,
        max_position_embeddings=model.max_position_embeddings,
        tie_word_embeddings=model.tie_embeddings,
        rope_parameters=_rope_parameters(model),
    )
    if model.arch == "gpt_neox":
        return dict(
            common,
            layer_norm_eps=model.norm_eps,
            use_parallel_residual=model.parallel_residual,
            hidden_act="gelu",
        )
    extra = {"sliding_window": model.sliding_window} if hf_model_type(model) == "mistral" else {}
    return dict(
        common,
        num_key_value_heads=model.num_query_groups,
        head_dim=model.head_dim,
        rms_norm_eps=model.norm_eps,
        hidden_act="silu",
        **extra,
    )


def hybrid_fields(model: ModelConfig) -> dict[str, Any]:
    return {"layer_pattern": model.layer_pattern, "mamba": to_dict(model.mamba)}
