"""The CUDA selective-scan backward (kernels/scan_backward_cuda.py) against autograd through the
float64 sequential reference (fp32 and bf16, every tiling, groups, both layouts) and against
mamba_ssm's backward, including sequences past one 2048-position chunk (which start from the
forward's saved states)."""

import pytest
import torch

from megatron_mamba.kernels import reference
from megatron_mamba.kernels.scan_backward_cuda import TILINGS

pytestmark = pytest.mark.gpu

# bf16: inputs and the saved y rounded, as the mixer has them; norms, not elements
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _case(batch, channels, length, state, groups, dtype, rows_layout, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    cuda = dict(device="cuda", generator=g)

    def bdl(scale=1.0, shift=0.0):
        if rows_layout:  # [channels, (b l)] seen as [b, d, l], as the one-function mixer holds it
            t = torch.randn(channels, batch, length, **cuda).transpose(0, 1)
        else:
            t = torch.randn(batch, channels, length, **cuda)
        return (t * scale + shift).to(dtype)

    u, delta, z, grad = bdl(), bdl(0.5, -1.0), bdl(), bdl()
    A = -torch.rand(channels, state, **cuda) - 0.5
    B, C = (torch.randn(batch, groups, state, length, **cuda).to(dtype) for _ in range(2))
    D, bias = torch.randn(channels, **cuda), torch.randn(channels, **cuda) * 0.3
    return u, delta, A, B, C, D, z, bias, grad


def _reference(u, delta, A, B, C, D, z, bias, grad):
    """(y ungated in the input dtype, {name: float64 gradient}, out_z float64)."""
    leaves = [t.detach().double().requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias)]
    uu, dd, AA, BB, CC, DD, zz, bb = leaves
    kw = dict(delta_bias_d=bb, delta_softplus=True)
    out_z = reference.selective_scan(uu, dd, AA, BB, CC, DD, zz, **kw)
    y = reference.selective_scan(uu, dd, AA, BB, CC, DD, None, **kw).detach()
    out_z.backward(grad.double())
    names = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
    grads = dict(zip(names, (t.grad for t in (uu, dd, AA, BB, CC, DD, zz, bb)), strict=True))
    return y.to(u.dtype), grads, out_z.detach()


def _relative(got, expected) -> float:
    return float((got.double() - expected).norm() / expected.norm())


def _ours(args, y, saved=None, tiling=None):
    from megatron_mamba.kernels.scan_backward_cuda import (
        DEFAULT_TILING,
        RESULTS,
        selective_scan_backward,
    )

    u, delta, A, B, C, D, z, bias, grad = args
    dz = torch.empty_like(z)
    results = selective_scan_backward(
        u, delta, A, B, C, D, z, bias, grad, y, dz, saved, tiling or DEFAULT_TILING
    )
    return dict(zip(RESULTS, results, strict=True)) | {"dz": dz}


@pytest.mark.parametrize("tiling", TILINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, channels, length, state, groups, rows_layout",
    [(2, 64, 300, 16, 1, True), (1, 48, 77, 16, 2, False), (2, 32, 64, 5, 4, True)],
)
def test_matches_autograd_through_the_float64_reference(
    tiling, dtype, batch, channels, length, state, groups, rows_layout
):
    args = _case(batch, channels, length, state, groups, dtype, rows_layout)
    if state % tiling[2]:
        with pytest.raises(ValueError, match="d_state"):
            _ours(args, torch.zeros_like(args[0]), tiling=tiling)
        return
    y, expected, out_z_expected = _reference(*args)
    got = _ours(args, y, tiling=tiling)
    assert _relative(got.pop("out_z"), out_z_expected) < TOLERANCE[dtype]
    errors = {name: _relative(got[name], expected[name]) for name in expected}
    assert max(errors.values()) < TOLERANCE[dtype], errors


@pytest.mark.parametrize("length", [1000, 2048, 4500])
def test_matches_mamba_ssms_backward_past_one_chunk(length):
    selective_scan_cuda = pytest.importorskip("selective_scan_cuda")
    args = _case(2, 256, length, 16, 1, torch.bfloat16, True)
    u, delta, A, B, C, D, z, bias, grad = args
    u = u.contiguous()  # the conv's output
    args = (u, *args[1:])
    y, saved, _ = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)
    dz_theirs = torch.empty_like(z)
    theirs = selective_scan_cuda.bwd(
        u, delta, A, B, C, D, z, bias, grad, saved, y, dz_theirs, True, True
    )
    names = ("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias", "out_z")
    theirs = dict(zip(names, theirs[:7] + theirs[8:], strict=True)) | {"dz": dz_theirs}
    ours = _ours(args, y, saved)
    for name, expected in theirs.items():
        assert ours[name].shape == expected.shape, name
        assert _relative(ours[name], expected.double()) < 1e-2, name


def test_a_long_sequence_without_the_saved_states_is_refused():
    args = _case(1, 32, 2049, 4, 1, torch.float32, False)
    y = torch.zeros_like(args[0])
    with pytest.raises(ValueError, match="cannot take u"):
        _ours(args, y)
