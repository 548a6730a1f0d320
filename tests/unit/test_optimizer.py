"""The trainer's optimizer: fused Adam and `_foreach` helpers give megatron's stock results."""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_mamba.config import ModelConfig, ParallelConfig, RunPrecision
from megatron_mamba.models.build import build_model
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.optimizer import (
    _foreach_l2_norm,
    _foreach_scale,
    grads_prepared_now,
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


def _run(model, build, steps: int = 3, step=None) -> list[torch.Tensor]:
    """`steps` optimizer steps on fixed gradients (each by `step(optimizer)`, default
    `optimizer.step()`); the weights after them."""
    ddp = wrap_ddp(model)
    config = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, clip_grad=0.5)
    optimizer = build(ddp, config)
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        for p in ddp.module.parameters():
            p.main_grad.copy_(torch.randn(p.shape, generator=generator))
        ok, grad_norm, _ = step(optimizer) if step else optimizer.step()
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


def test_without_master_weights_adam_updates_the_bf16_weights_as_torch_does(runtime):
    """train.fp32_master_weights=false: megatron's optimizer over bf16 weights and a bf16
    gradient buffer steps as torch's fused AdamW on the bf16 weights (TRL's arithmetic), with
    the clipping norm accumulated in fp32."""
    model = build_model(TINY, ParallelConfig(), RunPrecision("bf16"))
    twin = [p.detach().clone().requires_grad_() for p in model.parameters()]
    ddp = wrap_ddp(model, grad_reduce_in_fp32=False)
    config = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, clip_grad=0.5)
    config.params_dtype = torch.bfloat16
    optimizer = megatron_optimizer(ddp, config)
    reference = torch.optim.AdamW(twin, lr=1e-2, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        grads = [torch.randn(p.shape, generator=generator).bfloat16() for p in twin]
        for param, grad in zip(model.parameters(), grads, strict=True):
            assert param.main_grad.dtype == torch.bfloat16
            param.main_grad.copy_(grad)
        ok, grad_norm, _ = optimizer.step()
        norm = torch.cat([g.double().flatten() for g in grads]).norm().item()
        assert ok and grad_norm == pytest.approx(norm, rel=1e-6)
        for param, grad in zip(twin, grads, strict=True):
            param.grad = grad * (0.5 / (grad_norm + 1e-6))
        reference.step()
    states = [s for inner in inner_optimizers(optimizer) for s in inner.state.values()]
    assert {m.dtype for s in states for k, m in s.items() if k != "step"} == {torch.bfloat16}
    for got, want in zip(model.parameters(), twin, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=0)


def test_a_step_with_its_grads_prepared_first_prepares_once_and_updates_alike(runtime):
    """The trainer prepares the gradients before its loss checks (`grads_prepared_now`); the
    step inside then uses that preparation (one `prepare_grads` a step, not two) and gives the
    weights of a plain step."""
    model = build_model(TINY, ParallelConfig())
    twin = build_model(TINY, ParallelConfig())
    twin.load_state_dict(model.state_dict())
    _, expected = _run(model, megatron_optimizer)
    preparations = []

    def counting_preparations(ddp, config):
        optimizer = megatron_optimizer(ddp, config)
        prepare = optimizer.prepare_grads
        optimizer.prepare_grads = lambda: preparations.append(1) or prepare()
        return optimizer

    def step_prepared_first(optimizer):
        counting = optimizer.prepare_grads
        with grads_prepared_now(optimizer):
            prepared = len(preparations)
            result = optimizer.step()
            assert len(preparations) == prepared  # the step used the preparation made on entry
        assert optimizer.prepare_grads is counting
        return result

    _, weights = _run(twin, counting_preparations, step=step_prepared_first)
    assert len(preparations) == 3  # one a step
    for got, want in zip(weights, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class _Preparing:
    """Counts its preparations; `prepare_grads` a method of the class, as megatron's."""

    def __init__(self):
        self.count = 0

    def prepare_grads(self) -> bool:
        self.count += 1
        return self.count == 1  # the first preparation "finds an inf"


def test_an_unused_preparation_is_dropped_when_the_block_is_left():
    """A skipped step leaves the block without stepping: the next step prepares afresh, and
    the optimizer's own `prepare_grads` is back."""
    optimizer = _Preparing()
    with grads_prepared_now(optimizer):
        assert optimizer.count == 1 and "prepare_grads" in vars(optimizer)
    assert "prepare_grads" not in vars(optimizer)
    assert optimizer.prepare_grads() is False and optimizer.count == 2
    with grads_prepared_now(optimizer):
        assert optimizer.prepare_grads() is False and optimizer.count == 3  # prepared on entry
        assert optimizer.prepare_grads() is False and optimizer.count == 4  # then afresh
