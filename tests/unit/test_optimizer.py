"""The trainer's optimizer: fused Adam and `_foreach` helpers give megatron's stock results."""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.optimizer import (
    _foreach_l2_norm,
    _foreach_scale,
    inner_optimizers,
    megatron_optimizer,
)

TINY = ModelConfig(
    arch="gpt_neox",
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    ffn_hidden_size=64,
    vocab_size=128,
    layer_pattern="AM",
)


def _tensors(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in [(3, 5), (7,), (2, 2, 4), (1,)]]


def test_l2_norm_equals_a_float64_computation():
    tensors = _tensors(0)
    expected = torch.cat([t.double().flatten() for t in tensors]).norm()
    norm, per_tensor = _foreach_l2_norm(2048, None, [tensors], False)
    assert norm.shape == (1,) and norm.dtype == torch.float32 and per_tensor is None
    torch.testing.assert_close(norm.double(), expected.reshape(1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_scale_copies_into_targets_of_another_dtype(scale):
    sources = _tensors(1)
    targets = [torch.zeros_like(t, dtype=torch.bfloat16) for t in sources]
    _foreach_scale(2048, None, [sources, targets], scale)
    for source, target in zip(sources, targets, strict=True):
        assert target.dtype == torch.bfloat16
        torch.testing.assert_close(target, (source * scale).bfloat16(), rtol=0, atol=0)


def _run(model, build, steps: int = 3) -> list[torch.Tensor]:
    """`steps` optimizer steps on fixed gradients; the weights after them."""
    ddp = wrap_ddp(model)
    config = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, clip_grad=0.5)
    optimizer = build(ddp, config)
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        for p in ddp.module.parameters():
            p.main_grad.copy_(torch.randn(p.shape, generator=generator))
        ok, grad_norm, _ = optimizer.step()
        assert ok and grad_norm > 0.5  # clipping is active
    return optimizer, [p.detach().clone() for p in ddp.module.parameters()]


def test_fused_adam_steps_like_megatrons_stock_optimizer(runtime):
    model = build_model(TINY, ParallelConfig())
    twin = build_model(TINY, ParallelConfig())
    twin.load_state_dict(model.state_dict())
    stock, expected = _run(model, lambda ddp, config: get_megatron_optimizer(config, [ddp]))
    ours, weights = _run(twin, megatron_optimizer)
    assert all(
        g["foreach"] is None and not g["fused"] for g in inner_optimizers(stock)[0].param_groups
    )
    assert all(g["fused"] for inner in inner_optimizers(ours) for g in inner.param_groups)
    for got, want in zip(weights, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
