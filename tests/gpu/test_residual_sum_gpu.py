"""On the GPU: the block's residual sum as one Triton kernel (kernels/residual_sum.py) against a
float64 computation, forward and backward; one kernel forward and one sum backward for both
biases; and the dispatch takes it."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from megatron_mamba import kernels
from megatron_mamba.models.fused import torch_residual_sum

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels.residual_sum import residual_sum  # noqa: E402


def _inputs(shape, parts: int, with_bias: bool, dtype):
    torch.manual_seed(0)
    tensors = [torch.randn(*shape, device="cuda", dtype=dtype) for _ in range(1 + parts)]
    bias = torch.randn(shape[-1], device="cuda", dtype=dtype) if with_bias else None
    return tensors[0], tuple(tensors[1:]), bias


# hidden not a multiple of the kernel's block; Pythia-1b's [s, b, h]; one row
@pytest.mark.parametrize("shape", [(33, 2, 2500), (256, 4, 2048), (1, 7)])
@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_sum_matches_float64(shape, parts, with_bias, dtype):
    """Output to one rounding of the exact sum, plus fp32's rounding of each partial sum (the
    kernel adds in fp32); the gradient of every input is the output's, the bias's its sum over
    tokens."""
    residual, addends, bias = _inputs(shape, parts, with_bias, dtype)
    inputs = [t.requires_grad_() for t in (residual, *addends, *([bias] if with_bias else []))]
    out = residual_sum(residual, addends, bias)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    bias64 = inputs64[-1] if with_bias else None
    ref = torch_residual_sum(inputs64[0], tuple(inputs64[1 : 1 + parts]), bias64)
    refs = torch.autograd.grad(ref, inputs64, grad.double())
    rounding = 2**-24 if dtype == torch.float32 else 2**-8
    terms = sum(t.abs() for t in inputs64[1 : 1 + parts]) + inputs64[0].abs()
    terms = terms + (bias64.abs() if with_bias else 0)
    bound = rounding * ref.abs() + (1 + parts) * 2**-24 * terms
    assert ((out.double() - ref).abs() <= bound).all()
    for index, (got, want) in enumerate(zip(grads[: 1 + parts], refs, strict=False)):
        assert torch.equal(got, grad), index  # passed through untouched
        assert torch.equal(got.double(), want)
    if with_bias:  # a sum over tokens: torch's reduction, within its accumulation error
        torch.testing.assert_close(grads[-1].double(), refs[-1], rtol=rounding * 4, atol=1e-3)


def test_residual_sum_is_one_kernel_forward_one_sum_backward_and_the_dispatch_takes_it():
    residual, addends, bias = _inputs((128, 2, 1024), 2, True, torch.bfloat16)
    for t in (residual, *addends):
        t.requires_grad_()
    first_bias = bias.clone().requires_grad_()
    second_bias = bias.clone().requires_grad_()
    assert kernels.triton_residual_sum(residual) is residual_sum
    assert kernels.triton_residual_sum(residual.double()) is None  # float64 stays on torch
    out = residual_sum(residual, addends, first_bias + second_bias)  # compiled before profiling
    out.backward(torch.ones_like(out))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = residual_sum(residual, addends, first_bias + second_bias)
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA"]
    assert [n for n in names if n.startswith("_")] == ["_forward"], names
    reductions = [e for e in prof.key_averages() if "reduce_kernel" in e.key]
    assert sum(e.count for e in reductions) == 1, names  # one sum for both biases
    torch.testing.assert_close(first_bias.grad, second_bias.grad, rtol=0, atol=0)


def test_residual_sum_refuses_parts_unlike_the_residual():
    residual = torch.ones(4, 8, device="cuda")
    with pytest.raises(ValueError, match=r"parts like the residual \(\(4, 8\).*got \(\(4, 9\)"):
        residual_sum(residual, (torch.ones(4, 9, device="cuda"),))
    with pytest.raises(ValueError, match="one or two parts, got 3"):
        residual_sum(residual, (residual, residual, residual))
    with pytest.raises(ValueError, match=r"bias of shape \(8,\), got \(4,\)"):
        residual_sum(residual, (residual,), torch.ones(4, device="cuda"))


@pytest.mark.parametrize("strided", ["first", "both"])
def test_parts_stored_batch_first_are_read_in_place(monkeypatch, strided):
    """A [s, b, h] part stored batch-first (the one-function Mamba1 mixer's output) is read
    where it lies: the same sum bit for bit as from contiguous parts, and no copy kernel."""
    residual, addends, bias = _inputs((37, 3, 2048), 2, True, torch.bfloat16)

    def batch_first(t):
        return t.transpose(0, 1).contiguous().transpose(0, 1)

    viewed = tuple(
        batch_first(t) if strided == "both" or i == 0 else t for i, t in enumerate(addends)
    )
    assert not viewed[0].is_contiguous()
    want = residual_sum(residual, addends, bias)
    residual_sum(residual, viewed, bias)  # compiled before profiling
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        got = residual_sum(residual, viewed, bias)
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA"]
    assert names == ["_forward"], names
    assert torch.equal(got, want)
