"""fc1 and GeLU as one autograd function (models/linear_gelu.py): values and every gradient as
torch's autograd gives them in float64 (where the MLP takes it: test_mlp_bias_placement.py)."""

import torch
import torch.nn.functional as F

from megatron_mamba.models.linear_gelu import linear_gelu


def _inputs(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(24, 16, dtype=dtype, requires_grad=True)
    bias = torch.randn(24, dtype=dtype, requires_grad=True)
    return x, weight, bias


def test_values_and_gradients_match_autograd_through_linear_and_gelu():
    inputs = _inputs()
    got = linear_gelu(*inputs)
    want = F.gelu(F.linear(*inputs))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(got)
    for a, b in zip(
        torch.autograd.grad(got, inputs, grad),
        torch.autograd.grad(want, inputs, grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_only_the_gradients_asked_for_are_computed():
    x, weight, bias = _inputs()
    x = x.detach()  # a frozen input: no gradient for it
    (dweight,) = torch.autograd.grad(linear_gelu(x, weight, bias).sum(), (weight,))
    (want,) = torch.autograd.grad(F.gelu(F.linear(x, weight, bias)).sum(), (weight,))
    torch.testing.assert_close(dweight, want, rtol=1e-12, atol=1e-12)
