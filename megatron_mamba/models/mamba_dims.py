"""The Mamba mixers' sizes, derived once from the model config, and the TP splits they allow.

Both layouts reduce to one description per mixer. The attention layout (MambaInLlama) gives x and B
fewer channels than C (as V and K have fewer heads than Q under GQA); they are repeated per group of
`d_state` (mamba1) or per head (mamba2) up to d_inner. The classic layout is the case where nothing
is repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_mamba.config import ModelConfig


@dataclass(frozen=True)
class Mamba1Dims:
    """mamba1. `grouped`: B, C and dt come from the block input (MambaInLlama), one B/C per group of
    d_state channels; otherwise from the conv output through x_proj, one B/C for all channels."""

    d_model: int
    d_inner: int
    d_xb: int
    d_state: int
    d_conv: int
    dt_rank: int
    grouped: bool
    bias: bool
    conv_bias: bool

    @property
    def repeat(self) -> int:
        """How often each d_state-wide group of x and B is repeated to fill d_inner."""
        return self.d_inner // self.d_xb

    @property
    def in_proj_segments(self) -> tuple[int, ...]:
        """Rows of the fused input projection: [x, z] (classic) or [x, z, B, C] (grouped)."""
        if self.grouped:
            return (self.d_xb, self.d_inner, self.d_xb, self.d_inner)
        return (self.d_inner, self.d_inner)

    @property
    def conv_segments(self) -> tuple[int, ...]:
        """Channels of the convolution: x after its repetition to d_inner."""
        return (self.d_inner,)

    def check_tensor_parallel(self, tp: int) -> None:
        units = self.d_xb // self.d_state if self.grouped else self.d_inner
        what = "x/B groups (d_xb / d_state)" if self.grouped else "d_inner"
        if units % tp:
            raise ValueError(f"tensor-parallel size {tp} does not divide mamba1 {what}={units}")


@dataclass(frozen=True)
class Mamba2Dims:
    """mamba2: `heads` SSM heads of `head_dim` channels; x has `x_heads` heads and B `b_groups`
    groups (repeated up to `heads` and `c_groups`), C has `c_groups` groups, which also set the
    gated norm's groups."""

    d_model: int
    heads: int
    head_dim: int
    x_heads: int
    b_groups: int
    c_groups: int
    d_state: int
    d_conv: int
    chunk_size: int
    bias: bool
    conv_bias: bool
    norm_eps: float

    @property
    def d_inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def conv_segments(self) -> tuple[int, ...]:
        """Channels of the convolution: [x, B, C]."""
        n = self.d_state
        return (self.x_heads * self.head_dim, self.b_groups * n, self.c_groups * n)

    @property
    def in_proj_segments(self) -> tuple[int, ...]:
        """Rows of the fused input projection: [z, x, B, C, dt], mamba_ssm's order."""
        return (self.d_inner, *self.conv_segments, self.heads)

    def check_tensor_parallel(self, tp: int) -> None:
        for name, setting in _SPLIT_BY_TP.items():
            value = getattr(self, name)
            if value % tp:
                raise ValueError(
                    f"tensor-parallel size {tp} does not divide mamba2's {value} {setting}"
                )


# What each split count of Mamba2Dims comes from, in the user's settings.
_SPLIT_BY_TP = {
    "heads": "heads (d_inner / mamba.head_dim; the attention heads in the attention layout)",
    "x_heads": "x heads (the key/value heads in the attention layout)",
    "b_groups": "B groups (mamba.groups; the key/value heads in the attention layout)",
    "c_groups": "C groups (mamba.groups; the attention heads in the attention layout)",
}


def _bias(model: ModelConfig) -> bool:
    if model.mamba.proj_bias is not None:
        return model.mamba.proj_bias
    return model.mamba.init == "attention" and model.arch == "gpt_neox"


def mamba1_dims(model: ModelConfig) -> Mamba1Dims:
    cfg = model.mamba
    d_state = cfg.d_state or 16
    grouped = cfg.layout == "attention"
    if grouped:
        d_inner = model.num_attention_heads * model.head_dim
        d_xb = model.num_query_groups * model.head_dim
        if d_xb % d_state:
            raise ValueError(
                f"mamba1 d_state={d_state} does not divide the K/V width {d_xb} "
                "(num_query_groups · head_dim) of the attention layout"
            )
    else:
        d_inner = d_xb = cfg.d_inner or cfg.expand * model.hidden_size
    return Mamba1Dims(
        d_model=model.hidden_size,
        d_inner=d_inner,
        d_xb=d_xb,
        d_state=d_state,
        d_conv=cfg.d_conv,
        dt_rank=cfg.dt_rank or math.ceil(model.hidden_size / 16),
        grouped=grouped,
        bias=_bias(model),
        conv_bias=cfg.conv_bias,
    )


def mamba2_dims(model: ModelConfig) -> Mamba2Dims:
    cfg = model.mamba
    if cfg.layout == "attention":
        if cfg.d_state not in (None, model.head_dim):
            raise ValueError(
                f"mamba2 d_state={cfg.d_state} must equal head_dim={model.head_dim} in the "
                "attention layout (B and C take the shape of K and Q heads)"
            )
        heads, head_dim, d_state = model.num_attention_heads, model.head_dim, model.head_dim
        x_heads = b_groups = model.num_query_groups
        c_groups = heads
    else:
        d_inner = cfg.d_inner or cfg.expand * model.hidden_size
        if d_inner % cfg.head_dim:
            raise ValueError(
                f"mamba2 head_dim={cfg.head_dim} does not divide d_inner={d_inner} "
                "(expand · hidden_size unless set)"
            )
        heads, head_dim, d_state = d_inner // cfg.head_dim, cfg.head_dim, cfg.d_state or 128
        if heads % cfg.groups:
            raise ValueError(f"mamba2 groups={cfg.groups} does not divide its {heads} heads")
        x_heads, b_groups, c_groups = heads, cfg.groups, cfg.groups
    return Mamba2Dims(
        d_model=model.hidden_size,
        heads=heads,
        head_dim=head_dim,
        x_heads=x_heads,
        b_groups=b_groups,
        c_groups=c_groups,
        d_state=d_state,
        d_conv=cfg.d_conv,
        chunk_size=cfg.chunk_size,
        bias=_bias(model),
        conv_bias=cfg.conv_bias,
        norm_eps=cfg.norm_eps,
    )
