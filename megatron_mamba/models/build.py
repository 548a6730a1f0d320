"""Build a GPTNeoX or Llama/Mistral model on megatron-core from our typed config.

`to_transformer_config` is the one place our config becomes megatron's; `build_model` checks the
parallel layout first (nothing is allocated for a config that cannot work), then assembles
megatron's `GPTModel` (embedding, RoPE, output layer, loss; see models/language_model.py) around
a stack of `MixerBlock`s whose mixers come from the registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_mamba.config import ModelConfig, ParallelConfig, RunPrecision
from megatron_mamba.models.block import MixerBlock, MixerBlockSubmodules
from megatron_mamba.models.language_model import LanguageModel
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims
from megatron_mamba.models.mixers import mixer_spec
from megatron_mamba.models.mlp import MLP
from megatron_mamba.models.norms import LayerNorm, RMSNorm
from megatron_mamba.models.rotary import fused_qkv_rope_applies, use_rope_kernel

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stage_layer_counts(model: ModelConfig, parallel: ParallelConfig) -> list[int]:
    """Layers on each pipeline stage (even split, or given first/last stage sizes)."""
    pp, n = parallel.pipeline, model.num_layers
    if pp == 1:
        return [n]
    first, last = parallel.first_stage_layers, parallel.last_stage_layers
    middle_stages = pp - (first is not None) - (last is not None)
    rest = n - (first or 0) - (last or 0)
    if middle_stages == 0 and rest != 0:
        raise ValueError(
            f"first/last stage sizes {first}+{last} do not add up to num_layers={n} "
            f"over {pp} stages"
        )
    if middle_stages and (rest < 0 or rest % middle_stages):
        raise ValueError(
            f"num_layers={n} minus first/last stage sizes ({first}, {last}) leaves {rest} layers, "
            f"which do not split evenly over {middle_stages} pipeline stage(s)"
        )
    each = rest // middle_stages if middle_stages else 0
    counts = [each] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    if min(counts) < 1:
        raise ValueError(
            f"pipeline split {counts} of num_layers={n} over {pp} stages "
            "leaves a stage with no layer"
        )
    return counts


def validate_parallel(model: ModelConfig, parallel: ParallelConfig) -> None:
    """Refuse, with one sentence naming the value, a layout the model cannot be split into."""
    tp = parallel.tensor
    for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        value = getattr(model, name)
        if value % tp:
            raise ValueError(f"tensor-parallel size {tp} does not divide {name}={value}")
    if "mamba1" in model.mixers:
        mamba1_dims(model).check_tensor_parallel(tp)
    if "mamba2" in model.mixers:
        mamba2_dims(model).check_tensor_parallel(tp)
    stage_layer_counts(model, parallel)


def to_transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: RunPrecision | None = None,
    cpu_initialization: bool = True,
) -> TransformerConfig:
    """The megatron TransformerConfig for this model, layout and precision."""
    precision = precision or RunPrecision()
    neox = model.arch == "gpt_neox"
    dtype = _DTYPES[precision.dtype]
    recompute = {}
    if precision.recompute == "full":
        recompute = dict(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        )
    elif precision.recompute == "selective":
        recompute = dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    config = TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        ffn_hidden_size=model.ffn_hidden_size,
        layernorm_epsilon=model.norm_eps,
        add_bias_linear=neox,
        add_qkv_bias=neox,
        gated_linear_unit=not neox,
        activation_func=F.gelu if neox else F.silu,
        normalization="LayerNorm" if neox else "RMSNorm",
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        sequence_parallel=parallel.sequence_parallel,
        num_layers_in_first_pipeline_stage=parallel.first_stage_layers,
        num_layers_in_last_pipeline_stage=parallel.last_stage_layers,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision.dtype == "bf16",
        fp16=precision.dtype == "fp16",
        use_cpu_initialization=cpu_initialization,
        batch_p2p_sync=torch.cuda.is_available(),
        **recompute,
    )
    config.fused_single_qkv_rope = fused_qkv_rope_applies(config)
    return config


def layer_specs(model: ModelConfig) -> list[ModuleSpec]:
    """One block spec per layer, in global order; only the mixer differs between them."""
    norm = LayerNorm if model.arch == "gpt_neox" else RMSNorm
    return [
        ModuleSpec(
            module=MixerBlock,
            params={"parallel_residual": model.parallel_residual},
            submodules=MixerBlockSubmodules(
                input_layernorm=norm,
                mixer=mixer_spec(name, model),
                pre_mlp_layernorm=norm,
                mlp=MLP,
            ),
        )
        for name in model.mixers
    ]


def build_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: RunPrecision | None = None,
    cpu_initialization: bool = True,
) -> LanguageModel:
    """This pipeline stage's part of the model; needs the runtime (parallel state) initialised."""
    validate_parallel(model, parallel)
    use_rope_kernel()
    config = to_transformer_config(model, parallel, precision, cpu_initialization)
    offset = get_transformer_layer_offset(config)
    count = get_num_layers_to_build(config)
    block = TransformerBlockSubmodules(
        layer_specs=layer_specs(model)[offset : offset + count],
        layer_norm=LayerNorm if model.arch == "gpt_neox" else RMSNorm,
    )
    gpt = LanguageModel(
        config=config,
        transformer_layer_spec=block,
        vocab_size=model.padded_vocab_size(parallel.tensor),
        real_vocab_size=model.vocab_size,
        max_sequence_length=model.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_percent=model.rotary_percent,
        rotary_base=model.rotary_base,
        rope_scaling=model.rope_scaling_factor is not None,
        rope_scaling_factor=(
            8.0 if model.rope_scaling_factor is None else model.rope_scaling_factor
        ),  # 8.0: megatron's default, unused without scaling
    )
    return gpt
