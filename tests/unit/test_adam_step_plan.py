"""The one-launch Adam plans its step when megatron prepares the gradients, before clipping
waits on the GPU for their norm, and launches from that plan after it. Off the GPU the kernel
module is replaced by a recording stand-in that does Adam's arithmetic in torch, so that the
host side (what is gathered when, what reaches the launch) is checked here; the kernel itself
and this path on a GPU: tests/gpu/test_adamw_gpu.py."""

import sys
import types

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer import optimizer as megatron_optimizer_module

import megatron_mamba.kernels
from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.training import adamw
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.optimizer import inner_optimizers, megatron_optimizer
from tests.unit.test_optimizer import TINY


class RecordingKernel(types.ModuleType):
    """kernels/adamw's interface: takes every list, records each call in `events`."""

    def __init__(self, events: list):
        super().__init__("megatron_mamba.kernels.adamw")
        self.events, self.launched = events, []

    def supports(self, *lists):
        return True

    def takes_copies(self, params, copies):
        return True

    def block_tables(self, lists, tables, copies=None):
        self.events.append("tables")

    def adam_step(self, params, grads, exp_avgs, exp_avg_sqs, steps, tables, **kw):
        self.events.append("launch")
        self.launched.append((grads, kw["tables_ready"]))
        lr, beta1, beta2, eps = kw["lr"], kw["beta1"], kw["beta2"], kw["eps"]
        for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
            g = g * kw["grad_scale"]
            p.mul_(1 - lr * kw["weight_decay"])
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v / (1 - beta2**s)).sqrt().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**s))


@pytest.fixture
def kernel(monkeypatch):
    events = []
    stand_in = RecordingKernel(events)
    monkeypatch.setitem(sys.modules, "megatron_mamba.kernels.adamw", stand_in)
    monkeypatch.setattr(megatron_mamba.kernels, "adamw", stand_in, raising=False)
    monkeypatch.setattr(adamw, "_kernel_available", lambda: True)
    norm = megatron_optimizer_module.get_grad_norm_fp32

    def recorded_norm(*args, **kwargs):  # where clipping waits for the GPU
        events.append("norm")
        return norm(*args, **kwargs)

    monkeypatch.setattr(megatron_optimizer_module, "get_grad_norm_fp32", recorded_norm)
    return stand_in


def _optimizer(one_launch: bool, seed: int = 0):
    torch.manual_seed(seed)
    ddp = wrap_ddp(build_model(TINY, ParallelConfig()))
    config = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, clip_grad=0.5)
    return ddp, megatron_optimizer(ddp, config, one_launch_adam=one_launch)


def _random_grads(ddp, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ddp.zero_grad_buffer()
    for p in ddp.module.parameters():
        p.main_grad.copy_(torch.randn(p.shape, generator=generator))


def test_the_step_is_planned_before_clipping_and_launched_from_the_plan(runtime, kernel):
    ddp, optimizer = _optimizer(one_launch=True)
    reference_ddp, reference = _optimizer(one_launch=False)
    for model, opt in ((ddp, optimizer), (reference_ddp, reference)):
        for step in range(2):
            _random_grads(model, seed=step)
            opt.zero_grad()
            assert opt.step()[0]
    groups = sum(len(inner.param_groups) for inner in inner_optimizers(optimizer))
    one_step = ["tables"] * groups + ["norm"] + ["launch"] * groups
    assert kernel.events[: 2 * len(one_step)] == one_step * 2  # nothing gathered after the norm
    assert kernel.events.count("launch") == 2 * groups
    assert all(ready for _, ready in kernel.launched)
    for got, want in zip(ddp.module.parameters(), reference_ddp.module.parameters(), strict=True):
        torch.testing.assert_close(got, want)  # the clipped AdamW update, scale deferred


def test_a_gradient_replaced_after_planning_is_planned_again(runtime, kernel):
    ddp, optimizer = _optimizer(one_launch=True)
    inner = inner_optimizers(optimizer)[0]
    _random_grads(ddp, seed=3)
    optimizer.prepare_grads()
    param = inner.param_groups[0]["params"][0]
    param.grad = torch.ones_like(param)
    inner.step()
    assert kernel.events.count("tables") == 2 * len(inner.param_groups)
    assert any(g is param.grad for grads, _ in kernel.launched for g in grads)


def test_loading_a_state_drops_the_plan(runtime, kernel):
    ddp, optimizer = _optimizer(one_launch=True)
    inner = inner_optimizers(optimizer)[0]
    _random_grads(ddp, seed=4)
    optimizer.prepare_grads()
    assert inner._planned_step is not None
    inner.load_state_dict(inner.state_dict())
    assert "_planned_step" not in vars(inner)
