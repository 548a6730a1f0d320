"""On the GPU: the Triton bias + GeLU (kernels/bias_gelu.py) against a float64 computation, x's
and the bias's gradients included; one kernel each way; the route models take by default."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from megatron_mamba import kernels

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels.bias_gelu import TILING, bias_gelu, gelu  # noqa: E402


def _check(x, bias, grad, rel: float, bias_rel: float, tiling=TILING):
    """Output and x's gradient elementwise within `rel` (plus 1e-5 of the largest); the bias's
    gradient, a sum over rows, within `bias_rel` of its largest value."""
    x, bias = x.detach().requires_grad_(), bias.detach().requires_grad_()
    out = bias_gelu(x, bias, tiling)
    dx, dbias = torch.autograd.grad(out, [x, bias], grad)
    x64, b64 = x.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    ref = F.gelu(x64 + b64)
    rdx, rdbias = torch.autograd.grad(ref, [x64, b64], grad.double())
    for got, want in ((out, ref), (dx, rdx)):
        bound = rel * want.abs() + 1e-5 * want.abs().max()
        assert ((got.double() - want).abs() <= bound).all(), (got.dtype, want.shape)
    assert (dbias.double() - rdbias).abs().max() <= bias_rel * rdbias.abs().max()


# GPTNeoX's [s, b, ffn]; rows not a multiple of the kernel's row block; columns not of its block
@pytest.mark.parametrize(
    "shape", [(256, 4, 8192), (3 * TILING.rows_per_program + 5, 1, 1500), (2, 24)]
)
# the default [rows × columns] tiles, and one row a step each way
@pytest.mark.parametrize(
    "tiling",
    [TILING, TILING._replace(tile_rows=1, backward_tile_rows=1, backward_block=1024)],
    ids=["default", "one_row"],
)
def test_bias_gelu_matches_float64(shape, tiling):
    torch.manual_seed(0)
    x = 2 * torch.randn(*shape, device="cuda", dtype=torch.float64)
    bias = torch.randn(shape[-1], device="cuda", dtype=torch.float64)
    grad = torch.randn(*shape, device="cuda", dtype=torch.float64)
    _check(x.float(), bias.float(), grad.float(), 1e-5, 1e-5, tiling)
    # bf16: one rounding of each element; the bias gradient summed in fp32, rounded once
    _check(x.bfloat16(), bias.bfloat16(), grad.bfloat16(), 2**-8, 2**-7, tiling)


@pytest.mark.parametrize("shape", [(256, 4, 8192), (3 * TILING.tile_rows + 1, 1500)])
def test_gelu_without_a_bias_matches_float64(shape):
    """The fc1 + GeLU function's forward (its bias already in the product)."""
    torch.manual_seed(0)
    y = 2 * torch.randn(*shape, device="cuda", dtype=torch.float64)
    want = F.gelu(y)
    for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2**-8)):
        expected = F.gelu(y.to(dtype).double())
        bound = rel * expected.abs() + 1e-5 * want.abs().max()
        assert ((gelu(y.to(dtype)).double() - expected).abs() <= bound).all(), dtype


def test_bias_gelu_is_one_kernel_each_way_and_the_default(monkeypatch):
    x = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    monkeypatch.setenv("MEGATRON_MAMBA_REFERENCE_KERNELS", "1")
    assert kernels.triton_bias_gelu(x) is None
    monkeypatch.delenv("MEGATRON_MAMBA_REFERENCE_KERNELS")
    assert kernels.triton_bias_gelu(x) is bias_gelu
    bias_gelu(x, bias).sum().backward()  # compiled before profiling
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        bias_gelu(x, bias).sum().backward()
        torch.cuda.synchronize()
    names = {e.key: e.count for e in prof.key_averages()}
    assert names.get("_forward") == 1 and names.get("_backward") == 1, names


def test_bias_gelu_refuses_a_bias_of_another_width():
    with pytest.raises(ValueError, match="as wide as x's last dimension, 8; got \\(7,\\)"):
        bias_gelu(torch.ones(2, 8, device="cuda"), torch.ones(7, device="cuda"))


@pytest.mark.parametrize(
    "dtype,rel,bias_rel", [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2**-7, 2**-6)]
)
def test_fc1_and_gelu_as_one_function_match_float64(dtype, rel, bias_rel, monkeypatch):
    """models/linear_gelu.py on the GPU: its backward's kernel (GeLU's backward and the bias's
    gradient) and the products, against autograd in float64; the output's gradient through bf16
    products is held to a rounding of the largest value."""
    from megatron_mamba.models.linear_gelu import linear_gelu

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # fp32 products in fp32
    torch.manual_seed(0)
    x64 = torch.randn(3 * TILING.rows_per_program + 5, 2, 256, device="cuda", dtype=torch.float64)
    w64 = torch.randn(1500, 256, device="cuda", dtype=torch.float64) / 16
    b64 = torch.randn(1500, device="cuda", dtype=torch.float64)
    inputs = [t.to(dtype).requires_grad_() for t in (x64, w64, b64)]
    refs = [t.to(dtype).double().requires_grad_() for t in (x64, w64, b64)]
    out = linear_gelu(*inputs)
    ref = F.gelu(F.linear(*refs))
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, inputs, grad.to(dtype))
    want = torch.autograd.grad(ref, refs, grad)
    for got, expected in ((out, ref), *zip(grads, want, strict=True)):
        largest = expected.abs().max()
        assert (got.double() - expected).abs().max() <= rel * largest, (got.shape, dtype)
    assert (grads[2].double() - want[2]).abs().max() <= bias_rel * want[2].abs().max()


def test_fc1_and_gelu_backward_runs_the_kernel_not_torchs_gelu_backward():
    from megatron_mamba.models.linear_gelu import linear_gelu

    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    linear_gelu(x, w, b).sum().backward()  # compiled before profiling
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        linear_gelu(x, w, b).sum().backward()
        torch.cuda.synchronize()
    names = {e.key: e.count for e in prof.key_averages()}
    assert names.get("_backward") == 1 and "aten::gelu_backward" not in names, names
    assert names.get("_forward") == 1 and "aten::gelu" not in names, names
