"""mamba_ssm / causal_conv1d kernels against the pure-PyTorch references, fp32 and bf16,
forward and gradients."""

import pytest
import torch

from megatron_mamba import kernels
from megatron_mamba.kernels import reference

pytestmark = pytest.mark.gpu

TOL = {torch.float32: (2e-3, 2e-3), torch.bfloat16: (5e-2, 5e-2)}


def _grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.float().pow(2).sum().backward()
    return out.float(), [t.grad.float() for t in leaves]


def _compare(fused, ref, inputs, dtype):
    rtol, atol = TOL[dtype]
    out_f, grads_f = _grads(fused, inputs)
    out_r, grads_r = _grads(ref, inputs)
    scale = out_r.abs().max()
    torch.testing.assert_close(out_f / scale, out_r / scale, rtol=rtol, atol=atol)
    for gf, gr in zip(grads_f, grads_r, strict=True):
        gscale = gr.abs().max() + 1e-6
        torch.testing.assert_close(gf / gscale, gr / gscale, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def _needs_kernels():
    if not kernels.use_fused(torch.zeros(1, device="cuda")):
        pytest.skip("mamba_ssm / causal_conv1d are not installed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d(dtype):
    x = torch.randn(2, 64, 128, device="cuda", dtype=dtype)
    w = torch.randn(64, 4, device="cuda", dtype=dtype)
    b = torch.randn(64, device="cuda", dtype=dtype)
    _compare(
        lambda x, w, b: kernels.causal_conv1d(x, w, b, "silu"),
        lambda x, w, b: reference.causal_conv1d(x.float(), w.float(), b.float(), "silu"),
        [x, w, b],
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [0, 2])
def test_selective_scan(dtype, groups):
    b, d, n, length = 2, 64, 16, 128
    dev = "cuda"
    u = torch.randn(b, d, length, device=dev, dtype=dtype)
    delta = torch.randn(b, d, length, device=dev, dtype=dtype) * 0.5
    A = -torch.rand(d, n, device=dev) - 0.5
    shape = (b, n, length) if groups == 0 else (b, groups, n, length)
    B = torch.randn(*shape, device=dev, dtype=dtype)
    C = torch.randn(*shape, device=dev, dtype=dtype)
    D = torch.randn(d, device=dev)
    z = torch.randn(b, d, length, device=dev, dtype=dtype)
    bias = torch.randn(d, device=dev) * 0.1

    def run(module):
        return lambda u, delta, A, B, C, D, z, bias: module.selective_scan(
            u, delta, A, B, C, D, z, delta_bias_d=bias, delta_softplus=True
        )

    _compare(run(kernels), run(reference), [u, delta, A, B, C, D, z, bias], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssd(dtype):
    b, length, heads, p, groups, n = 2, 256, 8, 32, 2, 64
    dev = "cuda"
    x = torch.randn(b, length, heads, p, device=dev, dtype=dtype)
    dt = torch.randn(b, length, heads, device=dev, dtype=dtype) * 0.5 - 1
    A = -torch.rand(heads, device=dev) - 0.5
    B = torch.randn(b, length, groups, n, device=dev, dtype=dtype)
    C = torch.randn(b, length, groups, n, device=dev, dtype=dtype)
    D = torch.randn(heads, device=dev)
    z = torch.randn(b, length, heads, p, device=dev, dtype=dtype)
    bias = torch.randn(heads, device=dev) * 0.1

    def run(module):
        return lambda x, dt, A, B, C, D, z, bias: module.ssd_scan(
            x, dt, A, B, C, 64, D, z, dt_bias_h=bias, dt_softplus=True
        )

    _compare(run(kernels), run(reference), [x, dt, A, B, C, D, z, bias], dtype)
