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
from megatron_mamba.convert.hf_files import TOKEN_ID_KEYS
from megatron_mamba.convert.mamba_in_llama import MAMBA_IN_LLAMA_CONFIG

# Keys that shape the weights: where config.json lacks one, transformers fills in its own
# default (GPTNeoX's are GPT-NeoX-20B's), and the import would fail later on something else.
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_CALD_KEYS = ("intermediate_size", "state_size", "conv_kernel", "time_step_rank")
_MAMBA1_BIASES = ("proj_x_bias", "proj_z_bias", "out_proj_bias")


def _flag(ssm: dict, key: str, default: bool) -> bool:
    value = ssm.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{MAMBA_IN_LLAMA_CONFIG} ssm_cfg {key}={value!r}; expected true or false")
    return value


def _mamba_in_llama(base, mamba: dict) -> ModelConfig:
    """Their ssm_cfg holds the keyword arguments of their Mamba / Mamba2 classes; those that
    shape the weights are read (their defaults where absent)."""
    ssm = dict(mamba.get("ssm_cfg") or {})
    kind = "S" if "ngroups" in ssm else "M"
    attention = set(mamba.get("attn_layers") or [])
    pattern = "".join("A" if i in attention else kind for i in range(base.num_hidden_layers))
    settings: dict = {"layout": "attention", "conv_bias": _flag(ssm, "conv_bias", True)}
    for key in ("d_state", "d_conv"):
        if ssm.get(key) is not None:
            settings[key] = ssm[key]
    if kind == "M":
        settings.setdefault("d_state", 16)
        if ssm.get("dt_rank") not in (None, "auto"):
            settings["dt_rank"] = ssm["dt_rank"]
        # Mamba1 has three bias switches; our fused in_proj and out_proj share one.
        biases = {key: _flag(ssm, key, False) for key in _MAMBA1_BIASES}
        if len(set(biases.values())) > 1:
            found = ", ".join(f"{k}={v}" for k, v in biases.items())
            raise ValueError(
                f"{MAMBA_IN_LLAMA_CONFIG} ssm_cfg has {found}; expected all three equal"
            )
        settings["proj_bias"] = biases["out_proj_bias"]
    else:
        settings["proj_bias"] = _flag(ssm, "bias", False)
        if ssm.get("chunk_size") is not None:
            settings["chunk_size"] = ssm["chunk_size"]
    return model_config_from_hf(base, layer_pattern=pattern, mamba=settings)


def _cald(config: dict, path: Path) -> ModelConfig:
    _require(config, _CALD_KEYS, path)
    _require(config["gpt_neox_config"], _SHAPE_KEYS, path, within="gpt_neox_config")
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


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a transformers config file)")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:  # UnicodeDecodeError included
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}; expected a JSON object")
    return data


def _require(config: dict, keys: tuple[str, ...], path: Path, within: str = "") -> None:
    missing = [key for key in keys if key not in config] if isinstance(config, dict) else keys
    if missing:
        where = f"{path} ({within})" if within else str(path)
        raise ValueError(
            f"{where} lacks {', '.join(missing)}; these shape the weights, and "
            "transformers would fill in defaults that are not this checkpoint's"
        )


def source_model_config(root: str | Path) -> ModelConfig:
    """The configuration of the weights in `root` (a transformers checkpoint directory)."""
    import megatron_mamba.hf  # noqa: F401  (registers the hybrid types with AutoConfig)

    root = Path(root)
    raw = _read_json(root / "config.json")
    if "gpt_neox_config" in raw:
        return _cald(raw, root / "config.json")
    _require(raw, _SHAPE_KEYS, root / "config.json")
    config = AutoConfig.from_pretrained(root)
    if (root / MAMBA_IN_LLAMA_CONFIG).is_file() and config.model_type in ("llama", "mistral"):
        return _mamba_in_llama(config, _read_json(root / MAMBA_IN_LLAMA_CONFIG))
    return model_config_from_hf(config)


def source_token_ids(root: str | Path) -> dict:
    """The bos/eos/pad ids the checkpoint in `root` is used with, as transformers reads its
    config.json; recorded by an import so that an export writes them back."""
    import megatron_mamba.hf  # noqa: F401  (registers the hybrid types with AutoConfig)

    config = AutoConfig.from_pretrained(Path(root))
    return {key: getattr(config, key, None) for key in TOKEN_ID_KEYS}
