"""The Mamba mixers on the transformers side, with the published projects' parameter names.

Classic Mamba1 has transformers' MambaMixer's parameters (CALD's layer); it, MambaInLlama's Mamba1
(x, z, B, C from separate projections) and Mamba2 (both layouts) run the same conv and scan
functions as our megatron mixers at TP=1, so an export computes exactly what was trained. Decoding
keeps each layer's conv and SSM state in transformers' cache (the layer is a "linear_attention"
layer there) and continues from it for any number of new tokens. Every mixer takes transformers'
MambaMixer signature, `attention_mask` being the 2D padding mask of the new tokens (or None), so
batched left-padded generation gives each row what it gives alone.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn
from transformers.models.mamba.modeling_mamba import MambaMixer

from megatron_mamba import kernels
from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.hf_mamba_config import transformers_mamba_config
from megatron_mamba.models.mamba_dims import Mamba1Dims, Mamba2Dims, mamba1_dims, mamba2_dims
from megatron_mamba.models.mamba_math import (
    MambaState,
    selective_scan_after_conv,
    ssd_after_projection,
    stateful_conv,
)


class _Stateful(nn.Module):
    """Reads and writes a layer's MambaState in a transformers cache."""

    layer_idx: int
    d_conv: int

    def _state(self, cache) -> MambaState | None:
        conv = None if cache is None else cache.get_conv_state(self.layer_idx)
        if conv is None:
            return None
        return MambaState(conv, cache.get_recurrent_state(self.layer_idx))

    def _store(self, cache, state: MambaState) -> None:
        if cache is not None:
            cache.update_conv_state(state.conv, self.layer_idx, conv_kernel_size=self.d_conv)
            cache.update_recurrent_state(state.ssm, self.layer_idx)


def _conv(channels: int, d_conv: int, bias: bool) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, d_conv, groups=channels, padding=d_conv - 1, bias=bias)


class ClassicMamba1(MambaMixer, _Stateful):
    """transformers' MambaMixer (its parameters and their names, so CALD's weights and our exports
    load as they are) computing through our stateful conv and scan. MambaMixer itself continues
    from its cached state only for one new token at a time (several new tokens start afresh), and
    zeroes padding before in_proj, so a projection bias would enter the conv from padded positions;
    here the state carries over any number of tokens and padding is zeroed after the projection."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx=layer_idx)
        self.d_conv = self.conv_kernel_size

    def forward(
        self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **_
    ) -> torch.Tensor:
        xz = rearrange(self.in_proj(hidden_states), "b l d -> b d l")
        if cache is None and attention_mask is None:
            fused = self._fused(xz)
            if fused is not None:
                return fused
        state = self._state(cache)
        x, z = xz.contiguous().chunk(2, dim=1)
        x, conv_last = stateful_conv(
            x,
            self.conv1d.weight[:, 0],
            self.conv1d.bias,
            state.conv if state else None,
            attention_mask,
        )
        n = self.ssm_state_size
        dt_low, B, C = self.x_proj(rearrange(x, "b d l -> b l d")).split(
            [self.time_step_rank, n, n], dim=-1
        )
        y, ssm_last = selective_scan_after_conv(
            self,
            x,
            z,
            dt_low,
            rearrange(B, "b l n -> b n l").contiguous(),
            rearrange(C, "b l n -> b n l").contiguous(),
            state.ssm if state else None,
            cache is not None,
        )
        if cache is not None:
            self._store(cache, MambaState(conv_last, ssm_last))
        return self.out_proj(rearrange(y, "b d l -> b l d"))

    def _fused(self, xz: torch.Tensor) -> torch.Tensor | None:
        """mamba_ssm's one-function mixer (what MambaMixer trains through) where it runs (CUDA),
        for a whole unpadded sequence; None elsewhere."""
        out = kernels.fused_mamba1_inner(xz, self)
        if out is None or self.out_proj.bias is None:
            return out
        return out + self.out_proj.bias


class GroupedMamba1(_Stateful):
    """MambaInLlama's Mamba: x and B as wide as V and K, repeated per d_state group."""

    def __init__(self, dims: Mamba1Dims, layer_idx: int):
        super().__init__()
        self.dims, self.layer_idx, self.d_conv = dims, layer_idx, dims.d_conv
        d, bias = dims.d_model, dims.bias
        self.in_proj_x = nn.Linear(d, dims.d_xb, bias=bias)
        self.in_proj_z = nn.Linear(d, dims.d_inner, bias=bias)
        self.B_proj = nn.Linear(d, dims.d_xb, bias=bias)
        self.C_proj = nn.Linear(d, dims.d_inner, bias=bias)
        self.dt_proj_down = nn.Linear(d, dims.dt_rank, bias=False)
        self.dt_proj = nn.Linear(dims.dt_rank, dims.d_inner, bias=True)
        self.conv1d = _conv(dims.d_inner, dims.d_conv, dims.conv_bias)
        self.A_log = nn.Parameter(torch.zeros(dims.d_inner, dims.d_state))
        self.D = nn.Parameter(torch.ones(dims.d_inner))
        self.out_proj = nn.Linear(dims.d_inner, d, bias=bias)

    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None) -> torch.Tensor:
        n, r = self.dims.d_state, self.dims.repeat
        state = self._state(cache)
        x = repeat(self.in_proj_x(hidden_states), "b l (g n) -> b (g r n) l", n=n, r=r)
        B = repeat(self.B_proj(hidden_states), "b l (g n) -> b (g r) n l", n=n, r=r)
        C = rearrange(self.C_proj(hidden_states), "b l (g n) -> b g n l", n=n).contiguous()
        z = rearrange(self.in_proj_z(hidden_states), "b l d -> b d l")
        x, conv_last = stateful_conv(
            x,
            self.conv1d.weight[:, 0],
            self.conv1d.bias,
            state.conv if state else None,
            attention_mask,
        )
        y, ssm_last = selective_scan_after_conv(
            self,
            x,
            z,
            self.dt_proj_down(hidden_states),
            B,
            C,
            state.ssm if state else None,
            cache is not None,
        )
        if cache is not None:
            self._store(cache, MambaState(conv_last, ssm_last))
        return self.out_proj(rearrange(y, "b d l -> b l d"))


class Mamba2(_Stateful):
    """mamba_ssm's Mamba2 (and MambaInLlama's, whose x and B have the K/V heads' width)."""

    tp = 1

    def __init__(self, dims: Mamba2Dims, layer_idx: int):
        super().__init__()
        self.dims, self.layer_idx, self.d_conv = dims, layer_idx, dims.d_conv
        self.heads = dims.heads
        self.in_proj = nn.Linear(dims.d_model, sum(dims.in_proj_segments), bias=dims.bias)
        self.conv1d = _conv(sum(dims.conv_segments), dims.d_conv, dims.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(dims.heads))
        self.A_log = nn.Parameter(torch.zeros(dims.heads))
        self.D = nn.Parameter(torch.ones(dims.heads))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(dims.d_inner))
        self.out_proj = nn.Linear(dims.d_inner, dims.d_model, bias=dims.bias)

    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None) -> torch.Tensor:
        keep = cache is not None
        y, state = ssd_after_projection(
            self, self.in_proj(hidden_states), self._state(cache), keep, attention_mask
        )
        if keep:
            self._store(cache, state)
        return self.out_proj(y)


def build_mixer(kind: str, model: ModelConfig, layer_idx: int) -> nn.Module:
    """The transformers-side mixer of one layer."""
    if kind == "mamba2":
        return Mamba2(mamba2_dims(model), layer_idx)
    dims = mamba1_dims(model)
    if dims.grouped:
        return GroupedMamba1(dims, layer_idx)
    return ClassicMamba1(transformers_mamba_config(dims, model.num_layers), layer_idx)
