"""Our tensor-parallel linears at TP=1: torch's own product, megatron's results."""

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.profiler import ProfilerActivity, profile

from megatron_mamba.models.linear import ColumnLinear, RowLinear
from tests.helpers.autograd_graph import autograd_nodes

CONFIG = TransformerConfig(
    num_layers=1, hidden_size=16, num_attention_heads=2, use_cpu_initialization=True
)


def _column(cls):
    return cls(
        16, 24, config=CONFIG, init_method=torch.nn.init.normal_, bias=True, gather_output=False
    )


def _row(cls):
    return cls(
        16,
        24,
        config=CONFIG,
        init_method=torch.nn.init.normal_,
        bias=True,
        input_is_parallel=True,
        skip_bias_add=True,
    )


@pytest.mark.parametrize(
    "build,ours,megatrons",
    [(_column, ColumnLinear, ColumnParallelLinear), (_row, RowLinear, RowParallelLinear)],
)
def test_same_output_and_gradients_as_megatrons_linear(runtime, build, ours, megatrons):
    reference, local = build(megatrons), build(ours)
    local.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 16, dtype=torch.float64).float()
    results = []
    for module in (reference, local):
        u = x.clone().requires_grad_()
        out, bias = module(u)
        out = out if bias is None else out + bias
        grads = torch.autograd.grad(out.square().sum(), [u, *module.parameters()])
        results.append((out, autograd_nodes(out), grads))
    (want, megatron_nodes, want_grads), (got, our_nodes, got_grads) = results
    # The product is torch's autograd node, not megatron's Python autograd function.
    megatrons_product = "LinearWithGradAccumulationAndAsyncCommunicationBackward"
    assert megatrons_product in megatron_nodes and megatrons_product not in our_nodes
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("frozen", [True, False])
def test_a_transposed_input_runs_as_one_product(runtime, frozen):
    """A [b, d, l] mixer output seen as [l, b, d]: one matrix product (and a copy), not a
    batched product over the weight expanded per position, in a frozen model (a reference or
    teacher, whose weights take no gradient: torch's matmul then would not fold the input) as
    in a trained one."""
    layer = _row(RowLinear).requires_grad_(not frozen)
    y = torch.randn(3, 16, 40).transpose(0, 2).transpose(1, 2)  # [l, b, d], not contiguous
    assert not y.is_contiguous()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out, bias = layer(y)
    names = {e.key for e in prof.key_averages()}
    assert "aten::bmm" not in names and names & {"aten::mm", "aten::addmm"}, names
    assert bias is None  # added in the product on one rank
    torch.testing.assert_close(out, y.contiguous() @ layer.weight.t() + layer.bias)


def _row_with_megatrons_output():
    """Our row-parallel linear with megatron's weights and a non-zero bias, an input, and
    megatron's (output, bias) for it."""
    reference, local = _row(RowParallelLinear), _row(RowLinear)
    with torch.no_grad():
        reference.bias.normal_()
    local.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 16)
    return local, x, *reference(x)


def test_one_rank_adds_the_bias_in_the_product(runtime):
    """skip_bias_add on one TP rank: the bias comes back inside the output (addmm), None beside
    it; the values and gradients are megatron's output plus its returned bias."""
    local, x, want, want_bias = _row_with_megatrons_output()
    got, got_bias = local(x.clone().requires_grad_())
    assert got_bias is None and want_bias is not None
    assert "AddmmBackward0" in autograd_nodes(got)
    torch.testing.assert_close(got, want + want_bias, rtol=1e-6, atol=1e-6)


def test_one_rank_returns_the_bias_where_the_residual_sum_is_one_kernel(runtime, monkeypatch):
    """There the block's kernel adds it (and sums parallel residual's biases' gradient once):
    megatron's output and bias, apart."""
    monkeypatch.setattr(
        "megatron_mamba.kernels.triton_residual_sum", lambda residual: lambda *a: None
    )
    local, x, want, want_bias = _row_with_megatrons_output()
    got, got_bias = local(x)
    assert got_bias is local.bias
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_bias, want_bias, rtol=0, atol=0)
