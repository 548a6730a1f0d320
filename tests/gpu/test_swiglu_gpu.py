"""On the GPU: the Triton SwiGLU (kernels/swiglu.py) against a float64 computation, forward and
backward; one kernel each way, which the dispatch takes on GPU."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from megatron_mamba import kernels
from megatron_mamba.models.fused import torch_swiglu

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels.swiglu import swiglu  # noqa: E402


def _check(x, grad, rel: float):
    """Output and input gradient against float64, elementwise within `rel` of the value (plus
    1e-5 of the largest, for values near a cancellation)."""
    x = x.detach().requires_grad_()
    out = swiglu(x)
    (dx,) = torch.autograd.grad(out, x, grad)
    x64 = x.detach().double().requires_grad_()
    ref = torch_swiglu(x64)
    (dref,) = torch.autograd.grad(ref, x64, grad.double())
    for got, want in ((out, ref), (dx, dref)):
        bound = rel * want.abs() + 1e-5 * want.abs().max()
        assert ((got.double() - want).abs() <= bound).all(), (got.dtype, want.shape)


# f not a multiple of the kernel's block; a TP shard's width; rows of a [s, b, 2f] activation
@pytest.mark.parametrize("shape", [(511, 8, 2 * 5632), (64, 2, 2 * 1408), (5, 2 * 3)])
def test_swiglu_matches_float64(shape):
    """fp32 to 1e-5; bf16 to one rounding of the fp32 result (2^-8 relative), where torch's
    own bf16 ops round after silu and again after the product."""
    torch.manual_seed(0)
    x = 3 * torch.randn(*shape, device="cuda", dtype=torch.float64)
    grad = torch.randn(*shape[:-1], shape[-1] // 2, device="cuda", dtype=torch.float64)
    _check(x.float(), grad.float(), 1e-5)
    _check(x.bfloat16(), grad.bfloat16(), 2**-8)


def test_swiglu_is_one_kernel_each_way_and_the_dispatch_takes_it():
    x = torch.randn(256, 2 * 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert kernels.triton_swiglu(x) is swiglu
    assert kernels.triton_swiglu(x.double()) is None  # float64 stays on torch
    out = swiglu(x)  # compiled before profiling
    out.backward(torch.ones_like(out))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = swiglu(x)
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA"]
    assert sorted(n for n in names if n.startswith("_")) == ["_backward", "_forward"], names


def test_swiglu_refuses_an_odd_width():
    with pytest.raises(ValueError, match="even last dimension.*got 5"):
        swiglu(torch.ones(2, 5, device="cuda"))
