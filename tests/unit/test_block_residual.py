"""The block's residual sum (MixerBlock._add_to_residual): biases added together before the
one residual sum, each output's own dropout where configured, against the plain formula."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from megatron_mamba.models.block import MixerBlock


def _block(dropout: float, training: bool):
    """What _add_to_residual reads of a block."""
    return SimpleNamespace(config=SimpleNamespace(hidden_dropout=dropout), training=training)


def _inputs():
    torch.manual_seed(0)
    residual, attention, mlp = (torch.randn(5, 2, 8, requires_grad=True) for _ in range(3))
    attention_bias, mlp_bias = (torch.randn(8, requires_grad=True) for _ in range(2))
    return residual, attention, attention_bias, mlp, mlp_bias


@pytest.mark.parametrize("dropout,training", [(0.0, True), (0.3, False)])
def test_without_dropout_the_sum_and_every_gradient_match_the_formula(dropout, training):
    residual, attention, attention_bias, mlp, mlp_bias = inputs = _inputs()
    out = MixerBlock._add_to_residual(
        _block(dropout, training), residual, (attention, attention_bias), (mlp, mlp_bias)
    )
    want = residual + (attention + attention_bias) + (mlp + mlp_bias)
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, inputs, grad)
    want_grads = torch.autograd.grad(want, inputs, grad)
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_with_dropout_each_output_and_its_bias_get_their_own_mask():
    residual, attention, attention_bias, mlp, mlp_bias = _inputs()
    torch.manual_seed(1)
    out = MixerBlock._add_to_residual(
        _block(0.3, True), residual, (attention, attention_bias), (mlp, mlp_bias)
    )
    torch.manual_seed(1)
    first = F.dropout(attention + attention_bias, p=0.3)
    want = residual + first + F.dropout(mlp + mlp_bias, p=0.3)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    assert not torch.allclose(out, residual + attention + attention_bias + mlp + mlp_bias)


def test_outputs_without_bias_add_no_bias():
    residual, attention, _, _, _ = _inputs()
    out = MixerBlock._add_to_residual(_block(0.0, True), residual, (attention, None))
    torch.testing.assert_close(out, residual + attention, rtol=0, atol=0)
