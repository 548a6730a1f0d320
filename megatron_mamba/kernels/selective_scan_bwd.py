"""The backward of Mamba1's selective scan (softplus delta with a bias, D, gated by silu(z)) as a
Triton kernel, an alternative to mamba_ssm's `selective_scan_cuda.bwd`.

Why: on Pythia-1b's all-mamba1 step (d_inner 5120, d_state 16) mamba_ssm's backward is 47 of
~160 ms and the same kernel runs in CALD's baseline, so the mamba1 speed target (issue 4) needs a
faster one. Where it stands (`device_run.sh scan_bwd`, benchmarks/RESULTS.md): correct (GPU tests
against float64 autograd and mamba_ssm's), but 2.2× slower than mamba_ssm's on that shape, so it
is off unless MEGATRON_MAMBA_TRITON_SCAN_BWD=1 (kernels/mamba1_fused.py).

One program holds a chunk of positions × a block of channels × all states, sums dB and dC over
its channels in registers before one atomic add per (state, position), and runs the recurrences
as associative scans over the chunk. With a_t = exp(Δ_t A), h_t = a_t h_{t-1} + Δ_t B_t u_t,
y_t = C_t·h_t + D u_t (the forward's `out`, saved), out_z = y · silu(z), and the upstream
gradient g_y of out_z:
  dy_t = g_y silu(z_t),  dz_t = g_y y_t silu'(z_t),
  g_t = C_t dy_t + a_{t+1} g_{t+1}            (the gradient reaching h_t; a reverse scan),
  dB_t = Σ_d g_t Δ_t u_t,  dC_t = Σ_d dy_t h_t,  du_t = Σ_n g_t Δ_t B_t + D dy_t,
  dΔ_t = Σ_n g_t (B_t u_t + A (h_t − Δ_t B_t u_t)),  dA = Σ_t g_t Δ_t (h_t − Δ_t B_t u_t),
using a_t h_{t-1} = h_t − Δ_t B_t u_t so that nothing needs the previous position. Two passes
per program: forward over the chunks keeping only each chunk's starting state, then backward
over them, recomputing the states of one chunk from its start.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)  # exp(Δ A) = exp2(Δ A log2 e)


class Tiling(NamedTuple):
    """Channels per program, positions per chunk, warps. The tile is positions × channels ×
    states with the channels and states over a warp's lanes, so each thread scans its chunk in
    registers; one warp did best (`device_run.sh scan_bwd`, benchmarks/RESULTS.md)."""

    channels: int = 2
    chunk: int = 16
    warps: int = 1

    @classmethod
    def for_state(cls, state: int) -> Tiling:
        """A warp's 32 lanes over channels × states."""
        return cls(channels=max(1, 32 // triton.next_power_of_2(state)))


@triton.jit
def _first_order(a_left, b_left, a_right, b_right):
    """Composes h ← a h + b steps: left first, then right."""
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _scan_backward(
    u_ptr, delta_ptr, z_ptr, grad_ptr, y_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
    du_ptr, ddelta_ptr, dz_ptr, out_z_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, start_ptr,
    length, chunks, state, channels_per_group,
    su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, sg_b, sg_d, sy_b, sy_d,
    sdu_b, sdu_d, sddl_b, sddl_d, sdz_b, sdz_d, soz_b, soz_d,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sdB_b, sdB_g, sdB_n,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    # Tiles are [positions, channels, states]: Triton spreads the last axes over a warp's
    # lanes, so each thread holds its (channel, state)'s whole chunk and scans it in registers.
    block = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, CHUNK)
    n_ok = n < state
    group = (block * BLOCK_D) // channels_per_group
    A = tl.load(A_ptr + d[:, None] * state + n[None, :], mask=n_ok[None, :], other=0.0)
    A = A.to(tl.float32)[None, :, :]
    A2 = A * _LOG2E
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    bias = bias[None, :]
    D = tl.zeros([BLOCK_D], tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + d).to(tl.float32)
    starts = start_ptr + (b * tl.num_programs(0) + block) * chunks * BLOCK_D * BLOCK_N
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
    B_cols = B_ptr + b * sB_b + group * sB_g + n[None, :] * sB_n
    C_cols = C_ptr + b * sC_b + group * sC_g + n[None, :] * sC_n
    last = (t == CHUNK - 1)[:, None, None]

    # forward: each chunk's starting state
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for c in range(0, chunks):
        tl.store(starts + c * BLOCK_D * BLOCK_N + tile, h)
        pos = c * CHUNK + t
        ok = pos[:, None] < length
        raw = tl.load(delta_ptr + b * sdl_b + d[None, :] * sdl_d + pos[:, None], ok, other=0.0)
        dt = tl.where(ok, _softplus(raw.to(tl.float32) + bias), 0.0)
        u = tl.load(u_ptr + b * su_b + d[None, :] * su_d + pos[:, None], ok, other=0.0)
        u = u.to(tl.float32)
        Bt = tl.load(B_cols + pos[:, None], mask=n_ok[None, :] & ok, other=0.0)
        a = tl.exp2(dt[:, :, None] * A2)
        bx = (dt * u)[:, :, None] * Bt.to(tl.float32)[:, None, :]
        a_run, h_run = tl.associative_scan((a, bx), 0, _first_order)
        h = tl.sum(tl.where(last, h_run + a_run * h[None, :, :], 0.0), 0)

    tl.debug_barrier()  # the starting states stored above are read back by other threads

    # backward: the chunks in reverse, g carried from the next chunk's first position
    g_next = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dA = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD = tl.zeros([BLOCK_D], tl.float32)
    dbias = tl.zeros([BLOCK_D], tl.float32)
    first = (t == 0)[:, None, None]
    for i in range(0, chunks):
        c = chunks - 1 - i
        h0 = tl.load(starts + c * BLOCK_D * BLOCK_N + tile)
        pos = c * CHUNK + t
        ok = pos[:, None] < length
        dl = b * sdl_b + d[None, :] * sdl_d + pos[:, None]
        raw = tl.load(delta_ptr + dl, mask=ok, other=0.0).to(tl.float32) + bias
        dt = tl.where(ok, _softplus(raw), 0.0)
        ok_next = pos[:, None] + 1 < length
        raw_next = tl.load(delta_ptr + dl + 1, mask=ok_next, other=0.0).to(tl.float32)
        dt_next = tl.where(ok_next, _softplus(raw_next + bias), 0.0)
        u = tl.load(u_ptr + b * su_b + d[None, :] * su_d + pos[:, None], mask=ok, other=0.0)
        u = u.to(tl.float32)
        z = tl.load(z_ptr + b * sz_b + d[None, :] * sz_d + pos[:, None], mask=ok, other=0.0)
        z = z.to(tl.float32)
        gy = tl.load(grad_ptr + b * sg_b + d[None, :] * sg_d + pos[:, None], mask=ok, other=0.0)
        gy = gy.to(tl.float32)
        y = tl.load(y_ptr + b * sy_b + d[None, :] * sy_d + pos[:, None], mask=ok, other=0.0)
        y = y.to(tl.float32)
        state_ok = n_ok[None, :] & ok
        Bt = tl.load(B_cols + pos[:, None], mask=state_ok, other=0.0).to(tl.float32)[:, None, :]
        Ct = tl.load(C_cols + pos[:, None], mask=state_ok, other=0.0).to(tl.float32)[:, None, :]

        dtu = dt * u
        bx = dtu[:, :, None] * Bt
        a_run, h_run = tl.associative_scan((tl.exp2(dt[:, :, None] * A2), bx), 0, _first_order)
        hs = h_run + a_run * h0[None, :, :]
        sig = tl.sigmoid(z)
        dy = gy * z * sig
        dz = gy * y * sig * (1.0 + z * (1.0 - sig))
        a_next = tl.exp2(dt_next[:, :, None] * A2)
        g_run, g_sum = tl.associative_scan(
            (a_next, Ct * dy[:, :, None]), 0, _first_order, reverse=True
        )
        g = g_sum + g_run * g_next[None, :, :]
        g_next = tl.sum(tl.where(first, g, 0.0), 0)

        g_hb = g * (hs - bx)
        gB = tl.sum(g * Bt, 2)
        ddt = gB * u + tl.sum(g_hb * A, 2)
        ddelta = tl.where(raw <= 20.0, ddt * tl.sigmoid(raw), ddt)
        dA += tl.sum(g_hb * dt[:, :, None], 0)
        dD += tl.sum(dy * u, 0)
        dbias += tl.sum(tl.where(ok, ddelta, 0.0), 0)
        dBC = pos[:, None] + n[None, :] * sdB_n + b * sdB_b + group * sdB_g
        tl.atomic_add(dB_ptr + dBC, tl.sum(g * dtu[:, :, None], 1), mask=state_ok, sem="relaxed")
        tl.atomic_add(dC_ptr + dBC, tl.sum(hs * dy[:, :, None], 1), mask=state_ok, sem="relaxed")
        cols = d[None, :]
        tl.store(du_ptr + b * sdu_b + cols * sdu_d + pos[:, None], gB * dt + D[None, :] * dy, ok)
        tl.store(ddelta_ptr + b * sddl_b + cols * sddl_d + pos[:, None], ddelta, ok)
        tl.store(dz_ptr + b * sdz_b + cols * sdz_d + pos[:, None], dz, ok)
        tl.store(out_z_ptr + b * soz_b + cols * soz_d + pos[:, None], y * z * sig, ok)

    tl.atomic_add(dA_ptr + d[:, None] * state + n[None, :], dA, mask=n_ok[None, :], sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + d, dD, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + d, dbias, sem="relaxed")


def _bdl_strides(t: torch.Tensor) -> tuple[int, int]:
    if t.dim() != 3 or t.stride(2) != 1:
        raise ValueError(f"expected a [b, d, l] tensor contiguous in l, got strides {t.stride()}")
    return t.stride(0), t.stride(1)


def _bgnl(m: torch.Tensor) -> torch.Tensor:
    """B or C as [b, g, n, l] (a shared [b, n, l] as one group)."""
    m = m.unsqueeze(1) if m.dim() == 3 else m
    return m if m.stride(3) == 1 else m.contiguous()


RESULTS = ("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias", "out_z")


def selective_scan_backward(
    u, delta, A, B, C, D, z, delta_bias, grad, y, dz, tiling: Tiling | None = None
):
    """Gradients of out_z = selective_scan(u, delta, A, B, C, D, z, delta_bias,
    delta_softplus=True) for its upstream gradient `grad`, given the forward's ungated output
    `y` (mamba_ssm's `out`); dz is written into `dz`. Returns `RESULTS` (du, ddelta, dA, dB, dC,
    dD, ddelta_bias, out_z) as `selective_scan_cuda.bwd(..., delta_softplus=True,
    recompute_out_z=True)` does (dB, dC in float32 as [b, g, n, l])."""
    batch, channels, length = u.shape
    state = A.shape[1]
    B, C = _bgnl(B), _bgnl(C)
    groups = B.shape[1]
    per_group = channels // groups
    tiling = tiling or Tiling.for_state(state)
    block_d = min(tiling.channels, per_group & -per_group)  # a power of two dividing a group
    block_n = triton.next_power_of_2(state)
    chunks = triton.cdiv(length, tiling.chunk)
    blocks = channels // block_d
    du, ddelta, out_z = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(z)
    f32 = dict(device=u.device, dtype=torch.float32)
    dA = torch.zeros(channels, state, **f32)
    dB = torch.zeros(batch, groups, state, length, **f32)
    dC = torch.zeros(batch, groups, state, length, **f32)
    dD = torch.zeros(channels, **f32)
    dbias = torch.zeros(channels, **f32)
    starts = torch.empty(batch * blocks * chunks * block_d * block_n, **f32)
    A = A.contiguous()
    _scan_backward[(blocks, batch)](
        u, delta, z, grad, y, A, B, C,
        D if D is not None else dD, delta_bias if delta_bias is not None else dbias,
        du, ddelta, dz, out_z, dA, dB, dC, dD, dbias, starts,
        length, chunks, state, per_group,
        *_bdl_strides(u), *_bdl_strides(delta), *_bdl_strides(z), *_bdl_strides(grad),
        *_bdl_strides(y), *_bdl_strides(du), *_bdl_strides(ddelta), *_bdl_strides(dz),
        *_bdl_strides(out_z),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        dB.stride(0), dB.stride(1), dB.stride(2),
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=tiling.chunk, num_warps=tiling.warps,
    )  # fmt: skip
    dD = dD.to(D.dtype) if D is not None else None
    dbias = dbias.to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dbias, out_z
