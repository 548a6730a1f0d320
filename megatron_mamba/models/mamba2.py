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
from einops import rearrange, repeat
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels
from megatron_mamba.config import MambaConfig
from megatron_mamba.models.mamba_common import (
    MambaMixerBase,
    MambaState,
    dt_bias_fill,
    init_whole,
    local_segments,
    stateful_conv,
    tensor_parallel,
)
from megatron_mamba.models.mamba_dims import Mamba2Dims


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
        self._init_fresh(mamba)

    @torch.no_grad()
    def _init_fresh(self, mamba: MambaConfig) -> None:
        """mamba_ssm's Mamba2 initialisation (A uniform in a_init_range, dt log-uniform, D = 1),
        drawn whole and sliced (independent of the TP size)."""
        self._init_in_proj_and_conv()
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


def ssd_after_projection(
    mixer, proj_blc, state: MambaState | None, return_state: bool, keep_bl=None
):
    """Everything of a Mamba2 mixer between in_proj and out_proj, for ours or the
    transformers-side twin (same conv1d, A_log, D, dt_bias and norm; `dims`, `tp`, `heads`):
    [z, x, B, C, dt] [b, l, c] → y [b, l, d_inner/tp] and the state after the last token.
    `keep_bl` masks padding tokens out of the conv and the scan (stateful_conv)."""
    d, tp = mixer.dims, mixer.tp
    z, xBC, dt = proj_blc.split([d.d_inner // tp, sum(d.conv_segments) // tp, mixer.heads], dim=-1)
    xBC, conv_last = stateful_conv(
        rearrange(xBC, "b l c -> b c l"),
        mixer.conv1d.weight[:, 0],
        mixer.conv1d.bias,
        state.conv if state else None,
        keep_bl,
    )
    x, B, C = rearrange(xBC, "b c l -> b l c").split(local_segments(d.conv_segments, tp), -1)
    x = repeat(x, "b l (h p) -> b l (h r) p", p=d.head_dim, r=d.heads // d.x_heads)
    B = repeat(B, "b l (g n) -> b l (g r) n", n=d.d_state, r=d.c_groups // d.b_groups)
    C = rearrange(C, "b l (g n) -> b l g n", n=d.d_state)
    result = kernels.ssd_scan(
        x,
        dt,
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        d.chunk_size,
        D_h=mixer.D,
        dt_bias_h=mixer.dt_bias,
        dt_softplus=True,
        initial_state_bhpn=state.ssm if state else None,
        return_final_state=return_state,
    )
    y, ssm_last = result if return_state else (result, None)
    y = kernels.gated_rms_norm(
        rearrange(y, "b l h p -> b l (h p)"),
        z,
        mixer.norm.weight,
        d.norm_eps,
        group_size=d.d_inner // d.c_groups,
    )
    return y, (MambaState(conv_last, ssm_last) if return_state else None)
