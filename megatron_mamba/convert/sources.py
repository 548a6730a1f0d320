"""What a transformers checkpoint directory holds, as our ModelConfig.

Four layouts are recognised: plain GPTNeoX / Llama / Mistral; our hybrid exports (model types
`*_hybrid`); MambaInLlama's (a Llama/Mistral config.json plus mamba_config.json naming the
attention layers; the rest are Mamba, Mamba2 when its ssm_cfg has `ngroups`); and CALD's
(a transformers MambaConfig carrying `gpt_neox_config`: every layer Mamba1 inside GPTNeoX blocks).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.hf_config import model_config_from_hf

MAMBA_IN_LLAMA_CONFIG = "mamba_config.json"


def _mamba_in_llama(base, mamba: dict) -> ModelConfig:
    ssm = dict(mamba.get("ssm_cfg") or {})
    kind = "S" if "ngroups" in ssm else "M"
    attention = set(mamba.get("attn_layers") or [])
    pattern = "".join("A" if i in attention else kind for i in range(base.num_hidden_layers))
    settings: dict = {"layout": "attention"}
    if kind == "M":
        settings["d_state"] = ssm.get("d_state", 16)
        for theirs, ours in (("d_conv", "d_conv"), ("dt_rank", "dt_rank")):
            if ssm.get(theirs) not in (None, "auto"):
                settings[ours] = ssm[theirs]
    elif "d_conv" in ssm:
        settings["d_conv"] = ssm["d_conv"]
    return model_config_from_hf(base, layer_pattern=pattern, mamba=settings)


def _cald(config: dict) -> ModelConfig:
    settings = dict(
        layout="classic",
        d_inner=config["intermediate_size"],
        d_state=config["state_size"],
        d_conv=config["conv_kernel"],
        dt_rank=config["time_step_rank"],
        conv_bias=config.get("use_conv_bias", True),
        proj_bias=config.get("use_bias", False),
    )
    neox = {k: v for k, v in config["gpt_neox_config"].items() if k != "model_type"}
    base = AutoConfig.for_model("gpt_neox", **neox)
    return model_config_from_hf(base, layer_pattern="M" * base.num_hidden_layers, mamba=settings)


def source_model_config(root: str | Path) -> ModelConfig:
    """The configuration of the weights in `root` (a transformers checkpoint directory)."""
    import megatron_mamba.hf  # noqa: F401  (registers the hybrid types with AutoConfig)

    root = Path(root)
    raw = json.loads((root / "config.json").read_text())
    if "gpt_neox_config" in raw:
        return _cald(raw)
    config = AutoConfig.from_pretrained(root)
    if (root / MAMBA_IN_LLAMA_CONFIG).is_file() and config.model_type in ("llama", "mistral"):
        return _mamba_in_llama(config, json.loads((root / MAMBA_IN_LLAMA_CONFIG).read_text()))
    return model_config_from_hf(config)
