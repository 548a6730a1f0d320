"""On the GPU: two LayerNorms of one input as one Triton kernel each way (kernels/layer_norms.py)
against torch's LayerNorm twice in float64, the input's and all four parameters' gradients
included; one kernel each way; and GPTNeoX's logits and gradients with it as without."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from megatron_mamba import kernels
from tests.helpers.hf_tiny import (
    assert_same_logits_and_grads,
    cuda_twin_logits_and_grads,
    tiny_gpt_neox,
)

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels import layer_norms, row_layout  # noqa: E402
from megatron_mamba.kernels.layer_norms import ROWS_PER_PROGRAM, two_layer_norms  # noqa: E402


def _leaves(dtype, rows, width, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = 3 * torch.randn(rows, width, device="cuda", generator=g) + 1
    params = [torch.randn(width, device="cuda", generator=g) for _ in range(4)]
    grads = [torch.randn(rows, width, device="cuda", generator=g) for _ in range(2)]
    return [t.to(dtype) for t in (x, *params)], [t.to(dtype) for t in grads]


# Pythia-1b's [s·b, hidden]; rows not a multiple of the backward's row block; a width not a
# power of two (Pythia-2.8b's 2560)
@pytest.mark.parametrize("rows, width", [(2048, 2048), (3 * ROWS_PER_PROGRAM + 5, 2560), (3, 40)])
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-5), (torch.bfloat16, 2**-7)])
@pytest.mark.parametrize("used", ["both", "first"])
def test_two_layer_norms_match_float64(rows, width, dtype, rel, used):
    inputs, grads = _leaves(dtype, rows, width)
    ours = [t.detach().requires_grad_() for t in inputs]
    truth = [t.detach().double().requires_grad_() for t in inputs]
    y1, y2 = two_layer_norms(*ours, 1e-5)
    r1 = F.layer_norm(truth[0], (width,), truth[1], truth[2], 1e-5)
    r2 = F.layer_norm(truth[0], (width,), truth[3], truth[4], 1e-5)
    if used == "both":
        torch.autograd.backward([y1, y2], grads)
        torch.autograd.backward([r1, r2], [g.double() for g in grads])
    else:  # the second output unused: its gradient arrives as None
        y1.backward(grads[0])
        r1.backward(grads[0].double())
    checks = [(y1, r1), (y2, r2), (ours[0].grad, truth[0].grad)]
    for got, want in checks:
        assert (got.double() - want).norm() <= rel * want.norm(), (got.dtype, want.shape)
    for got, want in zip(ours[1:], truth[1:], strict=True):  # sums over rows
        want_grad = want.grad if want.grad is not None else torch.zeros_like(want)
        scale = want_grad.norm() + 1e-30
        assert (got.grad.double() - want_grad).norm() <= rel * scale + 1e-30


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-5), (torch.bfloat16, 2**-7)])
def test_the_first_output_batch_first_and_its_gradient_read_in_place(monkeypatch, dtype, rel):
    """The first output of a [s, b, h] input stored batch-first (for the one-function Mamba1
    mixer) and its gradient read in the strides it comes back in (that mixer's, batch-first):
    the float64 results, and no more copy kernels than with contiguous tensors (fewer than
    with the gradient copied first, as before `row_layout.rows_in_place`)."""
    s, b, width = 37, 3, 2048
    inputs, grads = _leaves(dtype, s * b, width)
    inputs[0] = inputs[0].view(s, b, width)
    dy1 = grads[0].view(b, s, width).transpose(0, 1)  # batch-first storage
    dy2 = grads[1].view(s, b, width)
    ours = [t.detach().requires_grad_() for t in inputs]
    truth = [t.detach().double().requires_grad_() for t in inputs]

    def copy_kernels(batch_first: bool, rows=row_layout.rows_in_place) -> int:
        monkeypatch.setattr(layer_norms, "rows_in_place", rows)
        grad1 = dy1 if batch_first else dy1.contiguous()
        y1, y2 = two_layer_norms(*ours, 1e-5, first_batch_first=batch_first)
        torch.autograd.backward([y1, y2], [grad1, dy2])  # compiled before profiling
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            y1, y2 = two_layer_norms(*ours, 1e-5, first_batch_first=batch_first)
            torch.autograd.backward([y1, y2], [grad1, dy2])
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if "copy" in e.key.lower())

    copied = copy_kernels(True, rows=row_layout.copied_rows)
    assert copy_kernels(True) == copy_kernels(False) < copied
    ours[0].grad = None
    y1, y2 = two_layer_norms(*ours, 1e-5, first_batch_first=True)
    assert y1.shape == (s, b, width) and y1.transpose(0, 1).is_contiguous()
    torch.autograd.backward([y1, y2], [dy1, dy2])
    r1 = F.layer_norm(truth[0], (width,), truth[1], truth[2], 1e-5)
    r2 = F.layer_norm(truth[0], (width,), truth[3], truth[4], 1e-5)
    torch.autograd.backward([r1, r2], [dy1.double(), dy2.double()])
    for got, want in [(y1, r1), (y2, r2), (ours[0].grad, truth[0].grad)]:
        assert (got.double() - want).norm() <= rel * want.norm()


def test_two_layer_norms_are_one_kernel_each_way(monkeypatch):
    (x, *params), (g1, g2) = _leaves(torch.bfloat16, 512, 2048)
    x = x.requires_grad_()
    monkeypatch.delenv("MEGATRON_MAMBA_REFERENCE_KERNELS", raising=False)
    assert kernels.triton_two_layer_norms(x) is two_layer_norms
    torch.autograd.backward(two_layer_norms(x, *params, 1e-5), [g1, g2])  # compiled first
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.autograd.backward(two_layer_norms(x, *params, 1e-5), [g1, g2])
        torch.cuda.synchronize()
    names = {e.key: e.count for e in prof.key_averages()}
    assert names.get("_forward") == 1 and names.get("_backward") == 1, names


def test_gpt_neox_gives_the_same_logits_and_gradients_with_it(monkeypatch):
    env = "MEGATRON_MAMBA_REFERENCE_KERNELS"
    runs = cuda_twin_logits_and_grads(monkeypatch, tiny_gpt_neox, env, ("1", "0"))
    for (_, _, nodes), fused in zip(runs, (False, True), strict=True):
        assert ("_TwoLayerNormsBackward" in nodes) == fused
    assert_same_logits_and_grads(runs)
