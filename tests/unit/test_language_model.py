"""The model's own pieces on one rank: the loss of an unsplit vocabulary and the bf16 LayerNorm."""

from dataclasses import replace

import pytest
import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.profiler import ProfilerActivity, profile

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.norms import LayerNorm
from megatron_mamba.models.presets import preset


@pytest.mark.parametrize("batch_first", [False, True])
def test_loss_is_megatrons_cross_entropy_over_the_real_vocabulary(runtime, batch_first):
    """200 real entries padded to 256: the padding is neither in the loss nor given gradient, so
    the loss does not depend on how far TP pads the vocabulary. The logits [s, b, vocabulary]
    stored sequence-first, or batch-first as the output layer writes them."""
    model = build_model(replace(preset("tiny-gpt-neox"), vocab_size=200), ParallelConfig())
    assert model.vocab_size == 256
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 3, 256, generator=generator, dtype=torch.float64).bfloat16()
    if batch_first:
        logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
    labels = torch.randint(0, 200, (3, 7), generator=generator)
    results = []
    for compute in (
        model.compute_language_model_loss,
        lambda y, x: vocab_parallel_cross_entropy(
            x[..., :200].float().contiguous(), y.t().contiguous()
        ).t(),
    ):
        x = logits.clone().requires_grad_()
        loss = compute(labels, x)
        weights = torch.arange(loss.numel(), dtype=torch.float32).view_as(loss)
        (grad,) = torch.autograd.grad((loss * weights).sum(), x)
        results.append((loss, grad))
    (ours, our_grad), (megatrons, megatron_grad) = results
    assert ours.shape == (3, 7) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, megatrons, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(our_grad, megatron_grad)
    assert (our_grad[..., 200:] == 0).all()


@pytest.mark.parametrize("tied", [False, True])
def test_logits_are_computed_batch_first_with_no_copy(runtime, tied):
    """GPTModel returns [b, s, vocabulary] logits (`transpose(0, 1).contiguous()` of the output
    layer's [s, b, vocabulary]): the output layer stores them batch-first, so neither that nor
    the backward copies a vocabulary-wide tensor; values and gradients are the product's."""
    cfg = replace(preset("tiny-llama"), tie_embeddings=tied)
    model = build_model(cfg, ParallelConfig())
    tokens = torch.randint(0, cfg.vocab_size, (2, 9))
    vocabulary = model.vocab_size
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        logits = model(tokens, None, None)
        logits.backward(torch.randn(2, 9, vocabulary))
    copies = [
        e.input_shapes
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::copy_", "aten::clone", "aten::contiguous")
        and any(shape and shape[-1] == vocabulary for shape in e.input_shapes)
    ]
    assert copies == []
    assert logits.shape == (2, 9, vocabulary) and logits.is_contiguous()
    hidden = torch.randn(9, 2, cfg.hidden_size, requires_grad=True)
    weight = model.shared_embedding_or_output_weight() if tied else model.output_layer.weight
    out, _ = model.output_layer(hidden, weight=weight if tied else None)
    assert out.shape == (9, 2, vocabulary) and out.transpose(0, 1).is_contiguous()
    want = hidden.detach() @ weight.detach().t()
    torch.testing.assert_close(out, want)
    (grad,) = torch.autograd.grad(out.sum(), hidden)
    torch.testing.assert_close(grad, weight.detach().sum(0).expand_as(grad))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_layer_norm_is_a_float64_layer_norm_rounded_once(dtype):
    config = TransformerConfig(
        num_layers=1, hidden_size=64, num_attention_heads=1, params_dtype=dtype
    )
    norm = LayerNorm(config, 64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=generator))
        norm.bias.copy_(torch.randn(64, generator=generator))
    x = (3 + 2 * torch.randn(5, 2, 64, generator=generator)).to(dtype)
    x64 = x.double()
    mean, var = x64.mean(-1, keepdim=True), x64.var(-1, unbiased=False, keepdim=True)
    expected = (x64 - mean) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()
    out = norm(x)
    assert out.dtype == dtype
    # One rounding to `dtype` of the exact result: within half an ulp, with a little slack.
    ulp = {torch.bfloat16: 2**-8, torch.float32: 2**-23}[dtype]
    assert ((out.double() - expected).abs() <= expected.abs() * ulp + 1e-5).all()
