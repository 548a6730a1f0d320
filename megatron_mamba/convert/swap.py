"""A native checkpoint → a native checkpoint with more of its attention layers swapped for Mamba:
the step between stages of progressive distillation (MambaInLlama: 25% Mamba, then 50%
starting from the first stage's weights; or one more layer per stage).

Layers already Mamba keep their trained mixers; the newly swapped ones start fresh or from their
attention (`mamba.init`); everything else is copied. Whole tensors, one process; the result
loads at any TP/PP and keeps the source's tokenizer files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.attention_to_mamba import fresh_mixer, swap_mixers, swapped_layers
from megatron_mamba.convert.hf_files import check_output, copy_tokenizer, output_directory
from megatron_mamba.convert.importer import check_kept_mamba, target_config
from megatron_mamba.convert.native_files import (
    parameter_layout,
    read_native,
    read_token_ids,
    write_native,
)
from megatron_mamba.runtime.distributed import ParallelSizes, init_runtime
from megatron_mamba.training.checkpoint import read_model_config


def swap_native(
    source: str | Path,
    output: str | Path,
    layer_pattern: str,
    mamba: dict[str, Any] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> ModelConfig:
    """Write `output`: `source`'s model with `layer_pattern`; returns the new configuration."""
    source = Path(source)
    check_output(output, overwrite, [source])
    source_cfg = read_model_config(source)
    target = target_config(source_cfg, layer_pattern, mamba)
    if not swapped_layers(source_cfg, target):
        raise ValueError(
            f"the layer pattern {layer_pattern!r} swaps no attention layer of {source} "
            f"(pattern {source_cfg.layer_pattern!r})"
        )
    init_runtime(ParallelSizes(1, 1), seed=seed)
    check_kept_mamba(source_cfg, target, source, mamba)
    state = swap_mixers(
        read_native(source, source_cfg),
        source_cfg,
        target,
        lambda kind, layer: fresh_mixer(kind, target, layer, seed),
    )
    layout = parameter_layout(target)
    token_ids = read_token_ids(source)
    with output_directory(output, overwrite, [source]) as temporary:
        write_native(temporary, target, state, layout, token_ids)
        copy_tokenizer(source, temporary)
    return target
