"""Native checkpoint → transformers checkpoint directory.

Attention-only models become plain GPTNeoX / Llama / Mistral directories that transformers loads
with no custom code. Hybrids become our transformers classes (megatron_mamba.hf), with the mixers
under CALD's or MambaInLlama's names; Llama/Mistral hybrids also get MambaInLlama's
mamba_config.json. Tensors stream from the loaded checkpoint into safetensors shards, released as
they are written; the directory is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.hf_config import hf_config_kwargs, hf_model_type, hybrid_fields
from megatron_mamba.convert.hf_files import (
    commit_output,
    copy_tokenizer,
    prepare_output,
    write_safetensors,
)
from megatron_mamba.convert.mapping import Context, expand, to_hf
from megatron_mamba.convert.native_files import read_native
from megatron_mamba.convert.sources import MAMBA_IN_LLAMA_CONFIG
from megatron_mamba.convert.tables import table_for
from megatron_mamba.models.mamba_dims import mamba1_dims
from megatron_mamba.runtime.distributed import ParallelSizes, init_runtime
from megatron_mamba.training.checkpoint import find_checkpoint, read_model_config

_ARCHITECTURES = {
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}
_REMOTE_CODE = "modeling_hybrid.py"


def hf_config_for(model: ModelConfig, dtype: torch.dtype):
    """The transformers config object of an export."""
    from megatron_mamba.hf.configuration import HYBRID_CONFIGS  # the package registers them

    kind = hf_model_type(model)
    kwargs = dict(hf_config_kwargs(model), dtype=str(dtype).removeprefix("torch."))
    if set(model.mixers) == {"attention"}:
        config = AutoConfig.for_model(kind, **kwargs)
        config.architectures = [_ARCHITECTURES[kind]]
        return config
    config = HYBRID_CONFIGS[kind](**kwargs, **hybrid_fields(model))
    name = config.__class__.__name__.removesuffix("Config")
    config.architectures = [f"{name}ForCausalLM"]
    module = _REMOTE_CODE.removesuffix(".py")
    config.auto_map = {
        "AutoConfig": f"{module}.{name}Config",
        "AutoModelForCausalLM": f"{module}.{name}ForCausalLM",
    }
    return config


def mamba_in_llama_config(model: ModelConfig) -> dict | None:
    """MambaInLlama's mamba_config.json, for Llama/Mistral hybrids of one attention-layout kind."""
    kinds = set(model.mixers) - {"attention"}
    if model.arch != "llama" or len(kinds) != 1 or model.mamba.layout != "attention":
        return None
    heads_width = model.num_attention_heads * model.head_dim
    if kinds == {"mamba1"}:
        dims = mamba1_dims(model)
        ssm = {"expand": 1, "d_state": dims.d_state, "d_conv": dims.d_conv}
    else:
        ssm = {"expand": 1, "ngroups": model.num_attention_heads, "d_state": model.head_dim}
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


def export_hf(
    checkpoint: str | Path,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
    tokenizer: str | Path | None = None,
    progress: bool = True,
) -> ModelConfig:
    """Write the transformers directory `output` from a native checkpoint; returns its config."""
    checkpoint = Path(checkpoint)
    step = find_checkpoint(checkpoint, checkpoint)  # fails early on a directory without one
    temporary = prepare_output(output, overwrite)
    try:
        init_runtime(ParallelSizes(1, 1))
        model = read_model_config(step)
        _write(step, model, temporary, dtype, max_shard_bytes, progress)
        tokenizer_source = Path(tokenizer) if tokenizer else checkpoint
        copy_tokenizer(tokenizer_source, temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    commit_output(temporary, output)
    return model


def hf_tensors(checkpoint: Path, model: ModelConfig, dtype: torch.dtype, progress: bool = False):
    """(transformers name, tensor) of a native checkpoint, one at a time: each native tensor is
    released as it is converted. Needs the runtime."""
    tensors = read_native(checkpoint, model)
    names = list(tensors)

    def released():
        for name in tqdm(names, desc="export", unit="tensor", disable=not progress):
            yield name, tensors.pop(name)

    for name, tensor in to_hf(expand(table_for(model), model), released(), Context(model)):
        yield name, tensor.to(dtype)


def load_as_transformers(checkpoint: str | Path, dtype: torch.dtype = torch.float32):
    """A native checkpoint as the transformers model its export would load as, built in memory
    (no files written): for evaluating or sampling a training checkpoint directly."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    step = find_checkpoint(Path(checkpoint), Path(checkpoint))
    init_runtime(ParallelSizes(1, 1))
    model = read_model_config(step)
    state = dict(hf_tensors(step, model, dtype))
    config = hf_config_for(model, dtype)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    return model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype).eval()


def _write(checkpoint, model, temporary: Path, dtype, max_shard_bytes, progress) -> None:
    write_safetensors(temporary, hf_tensors(checkpoint, model, dtype, progress), max_shard_bytes)
    config = hf_config_for(model, dtype)
    config.save_pretrained(temporary)
    if getattr(config, "auto_map", None):
        (temporary / _REMOTE_CODE).write_text(
            "# The hybrid classes live in the megatron_mamba package (pip install it).\n"
            "from megatron_mamba.hf.configuration import *  # noqa: F401,F403\n"
            "from megatron_mamba.hf.modeling import *  # noqa: F401,F403\n"
        )
    extra = mamba_in_llama_config(model)
    if extra is not None:
        (temporary / MAMBA_IN_LLAMA_CONFIG).write_text(json.dumps(extra, indent=2) + "\n")
