"""The Mamba2 (SSD) mixer, tensor- and sequence-parallel, for both layouts.

in_proj → [z, x, B, C, dt] (mamba_ssm's and transformers' order and names); causal conv over
[x, B, C]; x repeated per head and B per group up to the heads and C's groups (the attention
layout, as MambaInLlama's Mamba2, where x and B have the KV heads' shape and C the query heads');
SSD scan with A, D and dt_bias per head; gated RMSNorm per C group; out_proj.

megatron.core.ssm's MambaMixer is not reused: its norm and scan exist only as mamba_ssm Triton
kernels (no CPU path) and it has no repeated x/B layout. Its TP scheme is kept: every block of
in_proj and the conv is split over ranks by heads/groups, out_proj is row-parallel.
"""

from __future__ import annotations

import torch
from einops import rearrange
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels
from megatron_mamba.config import MambaConfig
from megatron_mamba.models.mamba_common import (
    MambaMixerBase,
    dt_bias_fill,
    init_whole,
    tensor_parallel,
)
from megatron_mamba.models.mamba_dims import Mamba2Dims
from megatron_mamba.models.mamba_math import MambaState, ssd_after_projection


class Mamba2Mixer(MambaMixerBase):
    kind = "mamba2"

    def __init__(
        self,
        config: TransformerConfig,
        dims: Mamba2Dims,
        mamba: MambaConfig,
        layer_number: int | None = None,
        **_unused,
    ):
        super().__init__(config, dims, layer_number)
        self.heads = dims.heads // self.tp
        factory = self.factory
        self.dt_bias = torch.nn.Parameter(torch.empty(self.heads, **factory))
        self.A_log = torch.nn.Parameter(torch.empty(self.heads, **factory))
        self.D = torch.nn.Parameter(torch.empty(self.heads, **factory))
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.ones(dims.d_inner // self.tp, **factory))
        for param in (self.dt_bias, self.A_log, self.D, self.norm.weight):
            tensor_parallel(param, 0)
        self._build_out_proj()
        with self._layer_generator():
            self._init_fresh(mamba)

    @torch.no_grad()
    def _init_fresh(self, mamba: MambaConfig) -> None:
        """mamba_ssm's Mamba2 initialisation (A uniform in a_init_range, dt log-uniform, D = 1),
        drawn whole and sliced (independent of the TP size)."""
        self._init_projections_and_conv()
        init_whole(self.dt_bias, dt_bias_fill(mamba.dt_min, mamba.dt_max, mamba.dt_init_floor))
        low, high = mamba.a_init_range
        init_whole(self.A_log, lambda t: t.copy_(torch.log(t.uniform_(low, high))))
        self.D.fill_(1.0)

    def empty_state(self, batch: int) -> MambaState:
        """The state before the first token."""
        d = self.dims
        conv = self.conv1d.weight.new_zeros(batch, self.conv1d.weight.shape[0], d.d_conv)
        ssm = conv.new_zeros(batch, self.heads, d.head_dim, d.d_state, dtype=torch.float32)
        return MambaState(conv, ssm)

    def forward_stateful(
        self, hidden_states: torch.Tensor, state: MambaState | None, return_state: bool = True
    ) -> tuple[tuple[torch.Tensor, torch.Tensor | None], MambaState | None]:
        """Mix `hidden_states` [s, b, h] continuing from `state` (None: from the start); returns
        (output, output bias) and the state after the last token (decode one token at a time)."""
        d, tp = self.dims, self.tp
        # Batch-first between the projections wherever they do not split the sequence (no
        # sequence parallelism): the kernels take [b, l, c], and transposing the h-wide input
        # and output copies a fraction of what transposing in_proj's output and the norm's does.
        batch_first = not self.config.sequence_parallel
        if batch_first:
            hidden_states = hidden_states.transpose(0, 1).contiguous()
        proj, _ = self.in_proj(hidden_states)
        proj_blc = proj if batch_first else rearrange(proj, "s b c -> b s c")
        y, new_state = None, None
        if state is None and not return_state and d.x_heads == d.heads and d.b_groups == d.c_groups:
            y = kernels.fused_mamba2_conv_scan_norm(
                proj_blc,
                self.conv1d.weight[:, 0],
                self.conv1d.bias,
                self.dt_bias,
                -torch.exp(self.A_log.float()),
                self.D,
                d.chunk_size,
                self.norm.weight,
                d.norm_eps,
                d.head_dim,
                d.c_groups // tp,
            )
        if y is None:
            y, new_state = ssd_after_projection(self, proj_blc, state, return_state)
        out, bias = self.out_proj(y if batch_first else rearrange(y, "b l c -> l b c"))
        if batch_first:
            out = out.transpose(0, 1).contiguous()
        return (out, bias), new_state
