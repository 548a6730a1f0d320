"""transformers' MambaConfig / Mamba2Config describing one of our mixers (classic layout, or the
attention layout's mamba2 once x and B are expanded to every head): Mamba1's for the exports'
classic mixer (transformers' MambaMixer), both for the transformers-built baselines of the tests
and benchmarks."""

from __future__ import annotations

from transformers import Mamba2Config, MambaConfig

from megatron_mamba.models.mamba_dims import Mamba1Dims, Mamba2Dims


def transformers_mamba_config(dims: Mamba1Dims, num_layers: int = 1) -> MambaConfig:
    if dims.grouped:
        raise ValueError("transformers' MambaMixer has no grouped (MambaInLlama) B/C layout")
    return MambaConfig(
        hidden_size=dims.d_model,
        state_size=dims.d_state,
        intermediate_size=dims.d_inner,
        conv_kernel=dims.d_conv,
        time_step_rank=dims.dt_rank,
        use_bias=dims.bias,
        use_conv_bias=dims.conv_bias,
        num_hidden_layers=num_layers,
    )


def transformers_mamba2_config(dims: Mamba2Dims, num_layers: int = 1) -> Mamba2Config:
    if dims.d_inner % dims.d_model:
        raise ValueError(
            f"transformers' Mamba2 needs d_inner={dims.d_inner} to be a whole multiple of "
            f"hidden_size={dims.d_model}"
        )
    return Mamba2Config(
        hidden_size=dims.d_model,
        num_heads=dims.heads,
        head_dim=dims.head_dim,
        n_groups=dims.c_groups,
        state_size=dims.d_state,
        expand=dims.d_inner // dims.d_model,
        conv_kernel=dims.d_conv,
        use_bias=dims.bias,
        use_conv_bias=dims.conv_bias,
        layer_norm_epsilon=dims.norm_eps,
        chunk_size=dims.chunk_size,
        num_hidden_layers=num_layers,
    )
