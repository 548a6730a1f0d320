"""fc1 and GeLU as one autograd function (models/linear_gelu.py): values and every gradient as
torch's autograd gives them in float64, and the MLP takes it on one TP rank only when the
pending kernels are asked for."""

import pytest
import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba.models.linear_gelu import linear_gelu
from megatron_mamba.models.mlp import MLP
from tests.helpers.autograd_graph import autograd_nodes


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


def _mlp(**overrides) -> MLP:
    config = TransformerConfig(
        num_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        ffn_hidden_size=32,
        add_bias_linear=True,
        use_cpu_initialization=True,
        **overrides,
    )
    mlp = MLP(config)
    torch.nn.init.normal_(mlp.linear_fc1.bias)
    return mlp


@pytest.mark.parametrize("pending", ["0", "1"])
def test_the_mlp_takes_it_on_one_rank_with_the_pending_kernels(runtime, monkeypatch, pending):
    monkeypatch.setenv("MEGATRON_MAMBA_PENDING_KERNELS", pending)
    mlp = _mlp()
    x = torch.randn(5, 3, 16, requires_grad=True)
    out, out_bias = mlp(x)
    assert ("_LinearGeluBackward" in autograd_nodes(out)) == (pending == "1")
    fc1, fc2 = mlp.linear_fc1, mlp.linear_fc2
    want = F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    torch.testing.assert_close(out + (0 if out_bias is None else out_bias), want)


def test_more_ranks_keep_the_bias_gelu_function(runtime, monkeypatch):
    monkeypatch.setenv("MEGATRON_MAMBA_PENDING_KERNELS", "1")
    mlp = _mlp(tensor_model_parallel_size=2)
    out, _ = mlp(torch.randn(5, 3, 16, requires_grad=True))
    assert "_LinearGeluBackward" not in autograd_nodes(out)
