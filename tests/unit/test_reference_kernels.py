"""The pure-PyTorch kernels against naive float64 recurrences written out step by step."""

import math

import pytest
import torch

from megatron_mamba.kernels.reference import causal_conv1d, selective_scan, ssd_scan

g = torch.Generator().manual_seed(0)


def rand(*shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def naive_mamba1(u, delta, A, B, C, D, z):
    """float64 loop over batch, channel, time: h = exp(ΔA)h + ΔBu, y = Ch + Du, y·silu(z)."""
    b, d, length = u.shape
    n = A.shape[1]
    groups = B.shape[1]
    y = torch.zeros_like(u)
    for bi in range(b):
        for ch in range(d):
            grp = ch // (d // groups)
            h = torch.zeros(n, dtype=torch.float64)
            for t in range(length):
                dt = delta[bi, ch, t]
                h = torch.exp(dt * A[ch]) * h + dt * B[bi, grp, :, t] * u[bi, ch, t]
                y[bi, ch, t] = (h * C[bi, grp, :, t]).sum() + D[ch] * u[bi, ch, t]
            y[bi, ch] *= z[bi, ch] / (1 + torch.exp(-z[bi, ch]))
    return y


@pytest.mark.parametrize("groups", [1, 2])
def test_selective_scan_matches_naive_recurrence(groups):
    b, d, n, length = 2, 4, 3, 7
    u, z = rand(b, d, length), rand(b, d, length)
    delta_raw, bias = rand(b, d, length), rand(d)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1
    B, C, D = rand(b, groups, n, length), rand(b, groups, n, length), rand(d)
    delta = torch.nn.functional.softplus(delta_raw + bias[:, None])
    expected = naive_mamba1(u, delta, A, B, C, D, z)
    B_in, C_in = (B[:, 0], C[:, 0]) if groups == 1 else (B, C)
    got = selective_scan(
        u, delta_raw, A, B_in, C_in, D, z, delta_bias_d=bias, delta_softplus=True
    ).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def naive_mamba2(x, dt, A, B, C, D):
    """float64 loop: h = exp(dt·A_h) h + dt·x ⊗ B, y = h·C + D x, per head (groups shared)."""
    b, length, heads, p = x.shape
    n, groups = B.shape[-1], B.shape[2]
    y = torch.zeros_like(x)
    for bi in range(b):
        for hd in range(heads):
            grp = hd // (heads // groups)
            h = torch.zeros(p, n, dtype=torch.float64)
            for t in range(length):
                step = dt[bi, t, hd]
                h = math.exp(step * A[hd]) * h + step * torch.outer(x[bi, t, hd], B[bi, t, grp])
                y[bi, t, hd] = h @ C[bi, t, grp] + D[hd] * x[bi, t, hd]
    return y


@pytest.mark.parametrize("length,chunk", [(8, 4), (11, 4), (5, 8)])
def test_ssd_matches_naive_recurrence(length, chunk):
    b, heads, p, groups, n = 2, 4, 3, 2, 5
    x, B, C = rand(b, length, heads, p), rand(b, length, groups, n), rand(b, length, groups, n)
    dt = torch.rand(b, length, heads, generator=g, dtype=torch.float64) * 0.5
    A, D = -torch.rand(heads, generator=g, dtype=torch.float64) - 0.1, rand(heads)
    expected = naive_mamba2(x, dt, A, B, C, D)
    got = ssd_scan(x, dt, A, B, C, chunk_size=chunk, D_h=D).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_ssd_final_state_continues_the_sequence():
    b, heads, p, groups, n, length = 1, 2, 3, 1, 4, 12
    x, B, C = rand(b, length, heads, p), rand(b, length, groups, n), rand(b, length, groups, n)
    dt = torch.rand(b, length, heads, generator=g, dtype=torch.float64) * 0.5
    A = -torch.rand(heads, generator=g, dtype=torch.float64) - 0.1
    whole = ssd_scan(x, dt, A, B, C, chunk_size=4)
    first, state = ssd_scan(
        x[:, :5], dt[:, :5], A, B[:, :5], C[:, :5], chunk_size=4, return_final_state=True
    )
    second = ssd_scan(
        x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], chunk_size=4, initial_state_bhpn=state
    )
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_causal_conv1d_sees_only_the_past():
    x, w, bias = rand(2, 3, 9), rand(3, 4), rand(3)
    out = causal_conv1d(x, w, bias)
    for t in range(9):
        window = torch.nn.functional.pad(x, (3, 0))[..., t : t + 4]
        torch.testing.assert_close(out[..., t], (window * w).sum(-1) + bias)
