"""Native checkpoint → transformers checkpoint directory.

Attention-only models become plain GPTNeoX / Llama / Mistral directories that transformers loads
with no custom code. Hybrids become our transformers classes (megatron_mamba.hf), with the mixers
under CALD's or MambaInLlama's names and the modeling_hybrid.py their config's save writes (for
`trust_remote_code`); Llama/Mistral hybrids also get MambaInLlama's mamba_config.json. Tensors
stream from the loaded checkpoint into safetensors shards, released as they are written; the
directory is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig, GenerationConfig

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.hf_config import hf_config_kwargs, hf_model_type, hybrid_fields
from megatron_mamba.convert.hf_files import (
    GENERATION_CONFIG,
    TOKEN_ID_KEYS,
    check_output,
    check_tokenizer_source,
    copy_tokenizer,
    find_tokenizer_dir,
    output_directory,
    tokenizer_token_ids,
    write_safetensors,
)
from megatron_mamba.convert.mapping import Context, expand, to_hf
from megatron_mamba.convert.native_files import read_native, read_token_ids
from megatron_mamba.convert.tables import table_for
from megatron_mamba.runtime.distributed import ParallelSizes, init_runtime
from megatron_mamba.training.checkpoint import find_checkpoint, read_model_config

_ARCHITECTURES = {
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}


def hf_config_for(model: ModelConfig, dtype: torch.dtype, token_ids: dict | None = None):
    """The transformers config object of an export; `token_ids` (bos/eos/pad) replace
    transformers' per-architecture defaults, which are another model's ids (None if unknown)."""
    from megatron_mamba.hf.configuration import HYBRID_CONFIGS  # the package registers them

    kind = hf_model_type(model)
    kwargs = dict(hf_config_kwargs(model), dtype=str(dtype).removeprefix("torch."))
    kwargs.update({key: (token_ids or {}).get(key) for key in TOKEN_ID_KEYS})
    if set(model.mixers) == {"attention"}:
        config = AutoConfig.for_model(kind, **kwargs)
        config.architectures = [_ARCHITECTURES[kind]]
        return config
    config = HYBRID_CONFIGS[kind](**kwargs, **hybrid_fields(model))
    name = config.__class__.__name__.removesuffix("Config")
    config.architectures = [f"{name}ForCausalLM"]
    return config


def export_hf(
    checkpoint: str | Path,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
    tokenizer: str | Path | None = None,
    progress: bool = True,
) -> ModelConfig:
    """Write the transformers directory `output` from a native checkpoint; returns its config.

    The tokenizer files come from `tokenizer` (which must hold some) or else the nearest
    directory at or above the checkpoint that holds some (an import's top directory); with none
    a warning says so. bos/eos/pad ids are those the conversion recorded, else the tokenizer's;
    a generation_config.json is written from them unless the tokenizer directory has one."""
    checkpoint = Path(checkpoint)
    sources = [checkpoint, *([tokenizer] if tokenizer else [])]
    check_output(output, overwrite, sources)
    step = find_checkpoint(checkpoint, checkpoint)  # fails early on a directory without one
    tokenizer_source = check_tokenizer_source(tokenizer) if tokenizer else find_tokenizer_dir(step)
    token_ids = read_token_ids(step)  # none recorded (a training run) or all None
    if not _known(token_ids) and tokenizer_source is not None:
        token_ids = tokenizer_token_ids(tokenizer_source)
    if tokenizer_source is None:
        _warn_no_tokenizer(checkpoint, token_ids)
    with output_directory(output, overwrite, sources) as temporary:
        init_runtime(ParallelSizes(1, 1))
        model = read_model_config(step)
        _write(step, model, temporary, dtype, max_shard_bytes, progress, token_ids)
        # with no tokenizer, still the generation_config.json an import keeps from its source
        copy_tokenizer(tokenizer_source or checkpoint, temporary)
        known = _known(token_ids)
        if known and not (temporary / GENERATION_CONFIG).is_file():
            GenerationConfig(**known).save_pretrained(temporary)
    return model


def _known(token_ids: dict | None) -> dict:
    return {key: value for key, value in (token_ids or {}).items() if value is not None}


def _warn_no_tokenizer(checkpoint: Path, token_ids: dict | None) -> None:
    """An export without a tokenizer loads, but cannot encode text; without bos/eos ids its
    generation never stops. Not refused: the weights alone may be what is wanted."""
    missing = "tokenizer files" if _known(token_ids) else "tokenizer files and no bos/eos ids"
    print(
        f"warning: the export has no {missing} (none in {checkpoint} or the directories above "
        "it); pass --tokenizer with the model's HF tokenizer directory",
        file=sys.stderr,
    )


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
    config = hf_config_for(model, dtype, read_token_ids(step))
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    return model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype).eval()


def _write(checkpoint, model, temporary: Path, dtype, max_shard_bytes, progress, token_ids):
    write_safetensors(temporary, hf_tensors(checkpoint, model, dtype, progress), max_shard_bytes)
    # hybrids: + remote code, and mamba_config.json where MambaInLlama's format applies
    hf_config_for(model, dtype, token_ids).save_pretrained(temporary)
