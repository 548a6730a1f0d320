"""The one-launch Adam's host side: its block tables, the class switch, and torch's step and
state wherever the kernel does not run (the kernel itself: tests/gpu/test_adamw_gpu.py)."""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from megatron_mamba.config import ParallelConfig
from megatron_mamba.kernels.tensor_blocks import TensorBlocks
from megatron_mamba.models.build import build_model
from megatron_mamba.training.adamw import (
    OneLaunchAdam,
    OneLaunchAdamW,
    defer_grad_scale,
    use_one_launch_adam,
    write_model_weights_in_step,
)
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.optimizer import inner_optimizers, megatron_optimizer
from tests.unit.test_optimizer import TINY


def test_blocks_cover_every_element_of_every_tensor_once():
    sizes = [1, 7, 8, 9, 16, 25]
    params = [torch.zeros(n) for n in sizes]
    grads = [torch.zeros(n) for n in sizes]
    blocks = TensorBlocks()
    blocks.update((params, grads), block=8)
    assert blocks.offsets.tolist() == [
        [(t.data_ptr() - params[0].data_ptr()) // 4 for t in params],
        [(t.data_ptr() - grads[0].data_ptr()) // 4 for t in grads],
    ]
    assert blocks.numels.tolist() == sizes
    covered = [torch.zeros(n, dtype=torch.int64) for n in sizes]
    starts = blocks.block_start.tolist()
    for tensor, start in zip(blocks.block_tensor.tolist(), starts, strict=True):
        assert 0 <= start < sizes[tensor] and start % 8 == 0
        covered[tensor][start : start + 8] += 1
    assert all(bool((c == 1).all()) for c in covered)
    assert blocks.block_tensor.numel() == sum(-(-n // 8) for n in sizes)


def test_blocks_are_made_again_only_when_an_address_changes():
    params = [torch.zeros(5), torch.zeros(3)]
    blocks = TensorBlocks()
    blocks.update((params,), block=4)
    tables = blocks.block_start
    blocks.update((params,), block=4)
    assert blocks.block_start is tables
    params[1] = torch.zeros(3)
    blocks.update((params,), block=4)
    assert blocks.block_start is not tables
    assert blocks.offsets[0, 1].item() * 4 == params[1].data_ptr() - params[0].data_ptr()


def test_lists_of_unequal_length_are_refused():
    with pytest.raises(ValueError, match=r"lists of \[2, 1\] tensors; expected 2 each"):
        TensorBlocks().update(([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)]), block=4)


@pytest.mark.parametrize(
    "torch_class,one_launch",
    [(torch.optim.AdamW, OneLaunchAdamW), (torch.optim.Adam, OneLaunchAdam)],
)
def test_adam_and_adamw_switch_to_their_one_launch_classes(torch_class, one_launch):
    optimizer = torch_class([torch.nn.Parameter(torch.zeros(2))])
    assert use_one_launch_adam(optimizer)
    assert type(optimizer) is one_launch and isinstance(optimizer, torch_class)
    assert use_one_launch_adam(optimizer)  # already switched


def test_other_optimizers_are_left_alone():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert not use_one_launch_adam(optimizer)
    assert type(optimizer) is torch.optim.SGD


def _params(seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in [(30,), (4, 5), (3,)]]


def _groups(params):
    return [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0}]


def _twins(seed):
    """Equal parameters under torch's fused AdamW and under a one-launch one: (reference
    parameters, ours, torch's optimizer, ours)."""
    reference, ours = _params(seed), _params(seed)
    torch_adam = torch.optim.AdamW(_groups(reference), lr=1e-2, fused=True)
    one_launch = torch.optim.AdamW(_groups(ours), lr=1e-2, fused=True)
    use_one_launch_adam(one_launch)
    return reference, ours, torch_adam, one_launch


def _same_random_grads(reference, ours, generator):
    for a, b in zip(reference, ours, strict=True):
        a.grad = torch.randn(a.shape, generator=generator)
        b.grad = a.grad.clone()


def test_off_gpu_it_steps_and_keeps_state_exactly_as_torchs_fused_adamw():
    reference, ours, torch_adam, one_launch = _twins(0)
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        _same_random_grads(reference, ours, generator)
        for optimizer in (torch_adam, one_launch):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 / (step + 1)
            optimizer.step()
    for a, b in zip(reference, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    saved = one_launch.state_dict()
    torch.testing.assert_close(saved, torch_adam.state_dict(), rtol=0, atol=0)
    again = torch.optim.AdamW(_groups(_params(2)), lr=1e-2, fused=True)
    use_one_launch_adam(again)
    again.load_state_dict(torch_adam.state_dict())  # and back: the same state either way
    torch.testing.assert_close(again.state_dict(), saved, rtol=0, atol=0)


def test_megatron_optimizer_takes_it_and_steps_as_with_torchs_kernel(runtime):
    model = build_model(TINY, ParallelConfig())
    twin = build_model(TINY, ParallelConfig())
    twin.load_state_dict(model.state_dict())
    weights = []
    for one_launch, module in ((False, model), (True, twin)):
        ddp = wrap_ddp(module)
        config = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, clip_grad=0.5)
        optimizer = megatron_optimizer(ddp, config, one_launch_adam=one_launch)
        inner_types = {type(inner) for inner in inner_optimizers(optimizer)}
        assert inner_types == ({OneLaunchAdamW} if one_launch else {torch.optim.AdamW})
        generator = torch.Generator().manual_seed(7)
        for _ in range(2):
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            for p in ddp.module.parameters():
                p.main_grad.copy_(torch.randn(p.shape, generator=generator))
            assert optimizer.step()[0]
        weights.append([p.detach().clone() for p in module.parameters()])
    for got, want in zip(weights[1], weights[0], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", ["torch_fused", "one_launch"])
def test_the_run_config_chooses_the_kernel(runtime, kernel):
    from megatron_mamba.config_io import load
    from megatron_mamba.training.optimizer import build_optimizer
    from megatron_mamba.training.run_config import RunConfig

    settings = ["model.layer_pattern=AM", "data.path=unused", "train.mixed_precision=no"]
    run = load(RunConfig, None, ["preset=tiny-gpt-neox", *settings, f"train.adam_kernel={kernel}"])
    model = build_model(run.model_config(), ParallelConfig())
    optimizer = build_optimizer(model, wrap_ddp(model), run)
    expected = OneLaunchAdamW if kernel == "one_launch" else torch.optim.AdamW
    assert {type(inner) for inner in inner_optimizers(optimizer)} == {expected}


def test_alignment_needs_16_byte_addresses_and_sizes_of_8_in_the_blocked_lists_only():
    storage = torch.zeros(64)
    steps = [torch.zeros(()), torch.zeros(())]
    blocks = TensorBlocks()
    blocks.update(([storage[:8], storage[8:24]],), block=8, scalars=(steps,))
    assert blocks.aligned  # the 0-dim step counts do not count
    assert blocks.offsets.shape == (2, 2)
    blocks.update(([storage[:8], storage[9:25]],), block=8, scalars=(steps,))
    assert not blocks.aligned  # an address 4 bytes past a multiple of 16
    blocks.update(([storage[:8], storage[8:20]],), block=8, scalars=(steps,))
    assert not blocks.aligned  # 12 elements


def test_clipping_left_to_the_step_gives_the_clipped_update():
    """Off GPU the deferred multiplication runs before torch's step: exactly clipping's."""
    reference, ours, torch_adam, one_launch = _twins(3)
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):
        _same_random_grads(reference, ours, generator)
        coefficient = torch.tensor(0.3, dtype=torch.float32)
        torch._foreach_mul_([p.grad for p in reference], coefficient)
        assert defer_grad_scale(ours, 0.3)
        torch_adam.step()
        one_launch.step()
        assert "_pending_grad_scale" not in one_launch.__dict__  # used once
    for a, b in zip(reference, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_clipping_is_not_deferred_unless_one_launch_optimizers_own_exactly_the_parameters():
    owned = _params(5)
    optimizer = torch.optim.AdamW(owned, lr=1e-2)
    use_one_launch_adam(optimizer)
    for p in owned:
        p.grad = torch.ones_like(p)
    stranger = torch.nn.Parameter(torch.zeros(3))
    assert not defer_grad_scale([*owned, stranger], 0.5)  # one not owned
    assert not defer_grad_scale(owned[:2], 0.5)  # the owner has another with a gradient
    owned[2].grad = None
    assert defer_grad_scale(owned[:2], 0.5)  # now it has not
    assert optimizer._pending_grad_scale == 0.5
    assert not defer_grad_scale([], 0.5)


def test_megatron_clipping_is_left_to_the_one_launch_step(runtime, monkeypatch):
    from megatron_mamba.training import adamw

    deferred = []
    original = adamw.defer_grad_scale

    def spy(params, scale):
        deferred.append(original(params, scale))
        return deferred[-1]

    monkeypatch.setattr("megatron_mamba.training.optimizer.defer_grad_scale", spy)
    model = build_model(TINY, ParallelConfig())
    ddp = wrap_ddp(model)
    config = OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=0.5)
    optimizer = megatron_optimizer(ddp, config, one_launch_adam=True)
    for p in ddp.module.parameters():
        p.main_grad.fill_(1.0)
    assert optimizer.step()[0]
    assert deferred == [True]


def test_offsets_reach_views_of_one_buffer_from_their_anchor():
    buffer = torch.zeros(40, dtype=torch.bfloat16)
    views = [buffer[16:24], buffer[0:8], buffer[30:40]]
    blocks = TensorBlocks()
    blocks.update((views,), block=8)
    assert blocks.offsets.tolist() == [[0, -16, 14]]


def test_without_master_weights_there_is_no_model_copy_to_take(runtime):
    """megatron's fp32 master weights need CUDA tensors (tests/gpu/test_adamw_gpu.py runs that
    case); an fp32 model's optimizer has no copy after the update, and keeps its own."""
    ddp = wrap_ddp(build_model(TINY, ParallelConfig()))
    config = OptimizerConfig(optimizer="adam", lr=1e-2)
    optimizer = megatron_optimizer(ddp, config, one_launch_adam=True)
    assert not write_model_weights_in_step(optimizer)
    assert "_model_weights" not in inner_optimizers(optimizer)[0].__dict__
