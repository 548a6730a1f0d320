"""Pure-PyTorch Mamba kernels: the CPU path and the oracle for the GPU kernels' parity tests.

Shapes follow mamba_ssm's kernels so the dispatch point can hand the same tensors to either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


def causal_conv1d(
    x_bdl: torch.Tensor,
    weight_dk: torch.Tensor,
    bias_d: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution over the sequence: output t sees inputs t-k+1 … t.

    In fp32 for half inputs, rounded once after the activation as causal_conv1d's kernel does
    (silu on a bf16-rounded sum rounds twice); the weight may be in another dtype than x."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"conv activation {activation!r} is unsupported; expected silu or None")
    cd = _compute_dtype(x_bdl)
    width = weight_dk.shape[-1]
    bias = bias_d.to(cd) if bias_d is not None else None
    x = x_bdl.to(cd)
    out = F.conv1d(x, weight_dk.to(cd).unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])
    out = out[..., : x_bdl.shape[-1]]
    if activation is not None:
        out = F.silu(out)
    return out.to(x_bdl.dtype)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half inputs (as the CUDA kernels accumulate), float64 kept for oracles."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _expand_groups(m: torch.Tensor, channels: int) -> torch.Tensor:
    """B or C as [b, n, l] (shared) or [b, g, n, l] (per group of channels) → [b, d, n, l]."""
    if m.dim() == 3:
        return m.unsqueeze(1).expand(-1, channels, -1, -1)
    groups = m.shape[1]
    return repeat(m, "b g n l -> b (g r) n l", r=channels // groups)


def selective_scan(
    u_bdl: torch.Tensor,
    delta_bdl: torch.Tensor,
    A_dn: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D_d: torch.Tensor | None = None,
    z_bdl: torch.Tensor | None = None,
    delta_bias_d: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state_bdn: torch.Tensor | None = None,
):
    """Mamba1's selective scan, sequential over time (fp32 state), as mamba_ssm's reference.

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t;  y_t = C_t · h_t + D u_t;  y ← y · silu(z).
    """
    dtype = u_bdl.dtype
    cd = _compute_dtype(u_bdl)
    u, delta = u_bdl.to(cd), delta_bdl.to(cd)
    if delta_bias_d is not None:
        delta = delta + delta_bias_d.to(cd)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    channels, length = u.shape[1], u.shape[2]
    B_dnl = _expand_groups(B.to(cd), channels)
    C_dnl = _expand_groups(C.to(cd), channels)
    A = A_dn.to(cd)
    state = (
        initial_state_bdn.to(cd)
        if initial_state_bdn is not None
        else u.new_zeros(u.shape[0], channels, A.shape[1])
    )
    # every step's decay and input at once ([b, d, l, n]), so that the loop over time is one
    # multiply-add per step (2.3× faster forward and backward on CPU than all of it per step)
    decay = torch.exp(delta[..., None] * A[:, None])
    inputs = (delta * u)[..., None] * B_dnl.transpose(-1, -2)
    states = []
    for t in range(length):
        state = decay[:, :, t] * state + inputs[:, :, t]
        states.append(state)
    y = (torch.stack(states, dim=2) * C_dnl.transpose(-1, -2)).sum(-1)
    if D_d is not None:
        y = y + u * D_d.to(cd)[..., None]
    if z_bdl is not None:
        y = y * F.silu(z_bdl.to(cd))
    y = y.to(dtype)
    return (y, state) if return_last_state else y


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: out[..., i, j] = sum(x[..., j+1 : i+1]) for j ≤ i, −inf above."""
    length = x.shape[-1]
    x = repeat(x, "... d -> ... d e", e=length)
    below = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), -1)
    sums = torch.cumsum(x.masked_fill(~below, 0), dim=-2)
    on_or_below = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device))
    return sums.masked_fill(~on_or_below, -torch.inf)


def ssd_scan(
    x_blhp: torch.Tensor,
    dt_blh: torch.Tensor,
    A_h: torch.Tensor,
    B_blgn: torch.Tensor,
    C_blgn: torch.Tensor,
    chunk_size: int,
    D_h: torch.Tensor | None = None,
    z_blhp: torch.Tensor | None = None,
    dt_bias_h: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state_bhpn: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Mamba2's state-space dual, computed chunk by chunk (quadratic inside, linear across).

    Same signature as mamba_ssm's `mamba_chunk_scan_combined`; z, when given, gates y · silu(z).
    """
    dtype = x_blhp.dtype
    cd = _compute_dtype(x_blhp)
    batch, length, heads, _ = x_blhp.shape
    groups = B_blgn.shape[2]
    dt = dt_blh.to(cd)
    if dt_bias_h is not None:
        dt = dt + dt_bias_h.to(cd)
    if dt_softplus:
        dt = F.softplus(dt)
    # a chunk longer than the sequence would only add padding to its quadratic part (the
    # result does not depend on the chunk size beyond rounding): 19× faster at 64 tokens
    chunk_size = min(chunk_size, length)
    pad = (-length) % chunk_size
    x, B, C = x_blhp.to(cd), B_blgn.to(cd), C_blgn.to(cd)
    B = repeat(B, "b l g n -> b l (g r) n", r=heads // groups)
    C = repeat(C, "b l g n -> b l (g r) n", r=heads // groups)
    X = x * dt[..., None]
    A = A_h.to(cd) * dt
    if pad:
        X, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (X, B, C))
        A = F.pad(A, (0, 0, 0, pad))
    X, A, B, C = (rearrange(t, "b (c l) ... -> b c l ...", l=chunk_size) for t in (X, A, B, C))
    A = rearrange(A, "b c l h -> b h c l")
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(_segsum(A))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    decay_states = torch.exp(A_cumsum[..., -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    if initial_state_bhpn is None:
        initial = torch.zeros_like(states[:, :1])
    else:
        initial = initial_state_bhpn.to(cd)[:, None]
    states = torch.cat([initial, states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cumsum[..., -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(A_cumsum))
    y = rearrange(Y_diag + Y_off, "b c l h p -> b (c l) h p")[:, :length]
    if D_h is not None:  # per head [h], or per channel [h, p] as mamba_ssm also takes
        D = D_h.to(cd)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z_blhp is not None:
        y = y * F.silu(z_blhp.to(cd))
    y = y.to(dtype)
    return (y, final_state) if return_final_state else y


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    group_size: int,
) -> torch.Tensor:
    """Mamba2's output norm: RMSNorm(x · silu(z)) over groups of `group_size` channels, in fp32."""
    dtype = x.dtype
    h = x.to(_compute_dtype(x))
    if z is not None:
        h = h * F.silu(z.to(h.dtype))
    h = rearrange(h, "... (g s) -> ... g s", s=group_size)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (rearrange(h, "... g s -> ... (g s)") * weight.to(h.dtype)).to(dtype)
