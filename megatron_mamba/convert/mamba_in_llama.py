"""MambaInLlama's mamba_config.json: written beside every save of a Llama/Mistral hybrid of one
Mamba kind in the attention layout (an export, or transformers' save_pretrained, e.g. TRL's), so
such a directory stays in their format; read back by the import (convert/sources.py)."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_mamba.config import ModelConfig
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims

MAMBA_IN_LLAMA_CONFIG = "mamba_config.json"


def mamba_in_llama_config(model: ModelConfig) -> dict | None:
    """MambaInLlama's mamba_config.json, for Llama/Mistral hybrids of one attention-layout kind.
    Its ssm_cfg holds the keyword arguments of their Mamba / Mamba2 classes that shape the
    weights (their Mamba1 splits our one projection bias into three equal switches)."""
    kinds = set(model.mixers) - {"attention"}
    if model.arch != "llama" or len(kinds) != 1 or model.mamba.layout != "attention":
        return None
    heads_width = model.num_attention_heads * model.head_dim
    if kinds == {"mamba1"}:
        dims = mamba1_dims(model)
        ssm = {"expand": 1, "d_state": dims.d_state, "d_conv": dims.d_conv}
        ssm.update(dt_rank=dims.dt_rank, conv_bias=dims.conv_bias)
        ssm.update(dict.fromkeys(("proj_x_bias", "proj_z_bias", "out_proj_bias"), dims.bias))
    else:
        dims = mamba2_dims(model)
        ssm = {"expand": 1, "ngroups": model.num_attention_heads, "d_state": dims.d_state}
        ssm.update(d_conv=dims.d_conv, bias=dims.bias, conv_bias=dims.conv_bias)
        ssm.update(chunk_size=dims.chunk_size)
    return {
        "d_model": model.hidden_size,
        "ssm_cfg": ssm,
        "rms_norm_eps": model.norm_eps,
        "vocab_size": model.vocab_size,
        "d_inner": heads_width,
        "d_xb": model.num_query_groups * model.head_dim,
        "intermediate_size": model.ffn_hidden_size,
        "hidden_act": "silu",
        "n_layer": model.num_layers,
        "attn_layers": [i for i, kind in enumerate(model.mixers) if kind == "attention"],
    }


def write_mamba_in_llama_config(model: ModelConfig, directory: str | Path) -> None:
    """mamba_config.json in `directory` where MambaInLlama's format describes `model`."""
    config = mamba_in_llama_config(model)
    if config is not None:
        text = json.dumps(config, indent=2) + "\n"
        (Path(directory) / MAMBA_IN_LLAMA_CONFIG).write_text(text)
