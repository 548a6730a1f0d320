"""Review regressions for the pure-PyTorch kernels: dtype handling of the conv as causal_conv1d's
kernel has it, mamba_chunk_scan_combined's per-channel D, and the states of both scans against
float64 recurrences written out step by step."""

import pytest
import torch
import torch.nn.functional as F

from megatron_mamba.kernels.reference import causal_conv1d, selective_scan, ssd_scan

g = torch.Generator().manual_seed(7)


def rand(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def naive_conv(x, w, bias):
    """float64 window sums: out[t] = Σ_k w[k] x[t - K + 1 + k] + bias."""
    width = w.shape[-1]
    padded = F.pad(x, (width - 1, 0))
    out = torch.stack([(padded[..., t : t + width] * w).sum(-1) for t in range(x.shape[-1])], -1)
    return out + bias[:, None]


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_bf16_conv_rounds_once_after_the_activation(weight_dtype):
    """causal_conv1d sums and applies silu in fp32, then rounds once to x's dtype; its weight
    may be fp32 under bf16 inputs."""
    x = rand(2, 8, 64).bfloat16()
    w, bias = rand(8, 4).to(weight_dtype), rand(8).to(weight_dtype)
    expected = F.silu(naive_conv(x.double(), w.double(), bias.double())).bfloat16()
    got = causal_conv1d(x, w, bias, "silu")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def naive_ssd(x, dt, A, B, C, D, z, h0):
    """float64 loop per head: h = exp(dt·A) h + dt·x ⊗ B, y = h·C + D∘x, y·silu(z)."""
    b, length, heads, _ = x.shape
    per_group = heads // B.shape[2]
    y, final = torch.zeros_like(x), h0.clone()
    for bi in range(b):
        for hd in range(heads):
            grp, h = hd // per_group, h0[bi, hd].clone()
            for t in range(length):
                step = dt[bi, t, hd]
                h = torch.exp(step * A[hd]) * h + step * torch.outer(x[bi, t, hd], B[bi, t, grp])
                y[bi, t, hd] = h @ C[bi, t, grp] + D[hd] * x[bi, t, hd]
            final[bi, hd] = h
    return y * F.silu(z), final


@pytest.mark.parametrize("length,chunk", [(4, 2), (6, 4), (5, 1)])
@pytest.mark.parametrize("per_channel_d", [False, True])
def test_ssd_with_every_option_matches_the_recurrence(length, chunk, per_channel_d):
    """D per head [h] or per channel [h, p] (mamba_chunk_scan_combined takes both; length 4 =
    heads once broadcast [h, p] D silently along time), z, dt bias + softplus, states in/out."""
    b, heads, p, groups, n = 2, 4, 3, 2, 5
    x, z = rand(b, length, heads, p), rand(b, length, heads, p)
    B, C = rand(b, length, groups, n), rand(b, length, groups, n)
    dt_raw, dt_bias, h0 = rand(b, length, heads), rand(heads), rand(b, heads, p, n)
    A = -torch.rand(heads, generator=g, dtype=torch.float64) - 0.1
    D = rand(heads, p) if per_channel_d else rand(heads)
    D_full = D if per_channel_d else D[:, None].expand(heads, p)
    dt = F.softplus(dt_raw + dt_bias)
    expected, expected_state = naive_ssd(x, dt, A, B, C, D_full, z, h0)
    got, state = ssd_scan(
        x,
        dt_raw,
        A,
        B,
        C,
        chunk,
        D,
        z,
        dt_bias_h=dt_bias,
        dt_softplus=True,
        initial_state_bhpn=h0,
        return_final_state=True,
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(state, expected_state)


def test_selective_scan_with_shared_b_c_continues_from_a_state():
    """B and C [b, n, l] shared by all channels, an initial state in and the last state out."""
    b, d, n, length = 2, 3, 4, 6
    u, delta_raw, z = rand(b, d, length), rand(b, d, length), rand(b, d, length)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1
    B, C, D, h0 = rand(b, n, length), rand(b, n, length), rand(d), rand(b, d, n)
    delta = F.softplus(delta_raw)
    h, ys = h0.clone(), []
    for t in range(length):
        h = (
            torch.exp(delta[..., t, None] * A) * h
            + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        )
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[..., t])
    expected = torch.stack(ys, -1) * F.silu(z)
    got, state = selective_scan(
        u,
        delta_raw,
        A,
        B,
        C,
        D,
        z,
        delta_softplus=True,
        return_last_state=True,
        initial_state_bdn=h0,
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(state, h)
