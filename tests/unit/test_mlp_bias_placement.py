"""Where the MLP's fc1 bias is added: inside the product on one TP rank (as transformers runs
GPTNeoX's MLP), by the bias + GeLU function otherwise; with the pending kernels, on one rank, fc1
and GeLU as one function (models/linear_gelu.py)."""

import pytest
import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba.models import mlp as mlp_module
from megatron_mamba.models.mlp import MLP
from tests.helpers.autograd_graph import autograd_nodes


def _config(**overrides) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        ffn_hidden_size=32,
        add_bias_linear=True,
        use_cpu_initialization=True,
        **overrides,
    )


def test_one_rank_adds_fc1_bias_in_the_product(runtime, monkeypatch):
    calls = []
    monkeypatch.setattr(mlp_module, "bias_gelu", lambda *a: calls.append(a))
    mlp = MLP(_config())
    torch.nn.init.normal_(mlp.linear_fc1.bias)
    x = torch.randn(5, 3, 16, requires_grad=True)
    hidden, bias = mlp.linear_fc1(x)
    assert bias is None and "AddmmBackward0" in autograd_nodes(hidden)
    fc1, fc2 = mlp.linear_fc1, mlp.linear_fc2
    out, out_bias = mlp(x)
    assert out_bias is None and not calls  # torch's GeLU, not the bias + GeLU function
    want = F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_more_ranks_leave_fc1_bias_to_the_bias_gelu_function(
    runtime, monkeypatch, sequence_parallel
):
    # a TP=2 config on the one-rank runtime: the layer sizes stay whole, the choice is the config's
    calls = []
    monkeypatch.setattr(mlp_module, "bias_gelu", lambda x, b: calls.append(b) or F.gelu(x + b))
    mlp = MLP(_config(tensor_model_parallel_size=2, sequence_parallel=sequence_parallel))
    fc1 = mlp.linear_fc1
    x = torch.randn(5, 3, 16)
    hidden, bias = fc1(x)
    assert bias is fc1.bias
    mlp(x)
    assert len(calls) == 1 and calls[0] is fc1.bias


def _mlp(**overrides) -> MLP:
    mlp = MLP(_config(**overrides))
    torch.nn.init.normal_(mlp.linear_fc1.bias)
    return mlp


@pytest.mark.parametrize("pending", ["0", "1"])
def test_one_rank_takes_fc1_and_gelu_as_one_function_with_the_pending_kernels(
    runtime, monkeypatch, pending
):
    monkeypatch.setenv("MEGATRON_MAMBA_PENDING_KERNELS", pending)
    mlp = _mlp()
    x = torch.randn(5, 3, 16, requires_grad=True)
    out, out_bias = mlp(x)
    assert ("_LinearGeluBackward" in autograd_nodes(out)) == (pending == "1")
    fc1, fc2 = mlp.linear_fc1, mlp.linear_fc2
    want = F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    torch.testing.assert_close(out + (0 if out_bias is None else out_bias), want)


def test_more_ranks_keep_the_bias_gelu_function_with_the_pending_kernels(runtime, monkeypatch):
    monkeypatch.setenv("MEGATRON_MAMBA_PENDING_KERNELS", "1")
    mlp = _mlp(tensor_model_parallel_size=2)
    out, _ = mlp(torch.randn(5, 3, 16, requires_grad=True))
    assert "_LinearGeluBackward" not in autograd_nodes(out)
