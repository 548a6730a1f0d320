"""The Mamba mixers' computation between their projections: the recurrent state, the stateful
causal conv, Mamba1's selective scan after the conv and Mamba2's SSD after in_proj.

Free of megatron-core: our megatron mixers (mamba1.py, mamba2.py) and their transformers-side twins
in exports (megatron_mamba.hf) both run these, so an export computes exactly what was trained and
loads without importing megatron-core."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from megatron_mamba import kernels


class MambaState(NamedTuple):
    """What a mixer carries between chunks when decoding: the last `d_conv` conv inputs
    [b, channels, d_conv] and the SSM state ([b, d_inner, d_state] or
    [b, heads, head_dim, d_state])."""

    conv: torch.Tensor
    ssm: torch.Tensor


def local_segments(segments: tuple[int, ...], tp: int) -> list[int]:
    return [s // tp for s in segments]


def stateful_conv(
    x_bcl: torch.Tensor,
    weight_ck: torch.Tensor,
    bias_c: torch.Tensor | None,
    prev: torch.Tensor | None,
    keep_bl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(causal depthwise conv) continuing from `prev` (the last d_conv inputs, or None for a
    fresh start); returns the output and the new last d_conv inputs. `keep_bl` (1 for a token, 0
    for padding) zeroes padding before and after the conv: a left-padded sequence then leaves the
    conv window and, since its x is zero, the scan state exactly as the unpadded one does."""
    width = weight_ck.shape[-1]
    if keep_bl is not None:
        x_bcl = x_bcl * keep_bl[:, None, :].to(x_bcl.dtype)
    if prev is None:
        out = kernels.causal_conv1d(x_bcl, weight_ck, bias_c, activation="silu")
        history = x_bcl
    else:
        history = torch.cat([prev[..., 1:].to(x_bcl.dtype), x_bcl], dim=-1)
        out = kernels.causal_conv1d(history, weight_ck, bias_c, activation="silu")
        out = out[..., width - 1 :]
    last = F.pad(history, (max(width - history.shape[-1], 0), 0))[..., -width:]
    if keep_bl is not None:
        out = out * keep_bl[:, None, :].to(out.dtype)
    return out, last


def selective_scan_after_conv(mixer, x, z, dt_low, B, C, ssm_state, return_state: bool):
    """The selective scan of a Mamba1 mixer (ours, or the transformers-side twin holding the same
    dt_proj, A_log and D) on conv outputs x [b, d, l] gated by z; dt_low [b, l, r] is projected up
    by dt_proj. Returns y [b, d, l] and the last SSM state (None unless `return_state`)."""
    # delta as [d, (b l)]: l moves fastest, the layout the scan kernel reads without a copy.
    batch = x.shape[0]
    dt = mixer.dt_proj.weight @ rearrange(dt_low, "b l r -> r (b l)")
    dt = rearrange(dt, "d (b l) -> b d l", b=batch)
    result = kernels.selective_scan(
        x,
        dt,
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        mixer.D.float(),
        z,
        delta_bias_d=mixer.dt_proj.bias.float(),
        delta_softplus=True,
        return_last_state=return_state,
        initial_state_bdn=ssm_state,
    )
    return result if return_state else (result, None)


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
