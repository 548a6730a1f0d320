"""Weight gradients added straight into DDP's buffer (parallel/weight_grad.py) equal autograd's,
summed over micro-batches, in every parameter: tied embeddings included."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.linear_gelu import linear_gelu
from megatron_mamba.parallel import weight_grad
from megatron_mamba.training.ddp import wrap_ddp
from tests.unit.test_optimizer import TINY

LLAMA_TIED = dataclasses.replace(
    TINY, arch="llama", num_query_groups=2, tie_embeddings=True, layer_pattern="AM"
)


def _micro_batches(count: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(0, TINY.vocab_size, (2, 9), generator=generator) for _ in range(count)]


def _backward(model) -> None:
    for tokens in _micro_batches():
        loss = model(tokens[:, :-1], None, None, labels=tokens[:, 1:])
        loss.float().mean().backward()


def _models(config):
    model = build_model(config, ParallelConfig())
    twin = build_model(config, ParallelConfig())
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("config", [TINY, LLAMA_TIED], ids=["gpt_neox", "llama_tied"])
def test_main_grad_holds_autograds_gradients_summed_over_micro_batches(runtime, config):
    reference, model = _models(config)
    _backward(reference)  # plain autograd, no DDP: the gradients sum in .grad
    ddp = wrap_ddp(model)
    ddp.zero_grad_buffer()
    _backward(ddp)
    taken = []
    for (name, expected), param in zip(
        reference.named_parameters(), model.parameters(), strict=True
    ):
        torch.testing.assert_close(param.main_grad, expected.grad, rtol=1e-5, atol=1e-6)
        assert param.grad is None, name  # DDP's hook dropped the stand-in
        if param.grad_added_to_main_grad:
            taken.append(name)
    assert any("linear_qkv.weight" in name for name in taken)
    assert any("linear_fc2.weight" in name for name in taken)
    assert any("mixer.in_proj.weight" in name for name in taken)
    assert not any("embedding" in name or "norm" in name for name in taken)
    assert ("output_layer.weight" in taken) == (not config.tie_embeddings)


def test_the_switch_leaves_gradients_to_autograd_and_ddps_hook(runtime, monkeypatch):
    monkeypatch.setenv("MEGATRON_MAMBA_WGRAD_INTO_MAIN_GRAD", "0")
    reference, model = _models(TINY)
    _backward(reference)
    ddp = wrap_ddp(model)
    _backward(ddp)
    for expected, param in zip(reference.parameters(), model.parameters(), strict=True):
        assert not param.grad_added_to_main_grad
        torch.testing.assert_close(param.main_grad, expected.grad, rtol=1e-5, atol=1e-6)


def test_off_gpu_a_buffer_of_another_dtype_is_left_to_ddps_hook():
    weight = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.bfloat16))
    weight.main_grad = torch.zeros(3, 4)
    weight.grad_added_to_main_grad = False
    a, b = torch.randn(3, 5, dtype=torch.bfloat16), torch.randn(5, 4, dtype=torch.bfloat16)
    grad = weight_grad.weight_gradient(weight, a, b)
    torch.testing.assert_close(grad, a @ b, rtol=0, atol=0)
    assert not weight.grad_added_to_main_grad and not weight.main_grad.any()


def test_without_grad_or_without_a_buffer_it_is_torchs_linear():
    weight = torch.nn.Parameter(torch.randn(3, 4))
    assert not weight_grad.takes_main_grad(weight)  # no DDP buffer
    weight.main_grad, weight.grad_added_to_main_grad = torch.zeros(3, 4), False
    assert weight_grad.takes_main_grad(weight)
    with torch.no_grad():
        assert not weight_grad.takes_main_grad(weight)
    x = torch.randn(2, 4, requires_grad=True)
    out = weight_grad.linear(x, weight, None)
    torch.testing.assert_close(out, x @ weight.t(), rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(weight.main_grad, torch.ones(2, 3).t() @ x.detach())
    torch.testing.assert_close(x.grad, torch.ones(2, 3) @ weight.detach())


def test_fc1_and_gelu_as_one_function_adds_its_weight_gradient_to_the_buffer():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 8, generator=generator, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(16, 8, generator=generator))
    bias = torch.nn.Parameter(torch.randn(16, generator=generator))
    start = torch.randn(16, 8, generator=generator)
    weight.main_grad, weight.grad_added_to_main_grad = start.clone(), False
    linear_gelu(x, weight, bias).square().sum().backward()
    assert weight.grad_added_to_main_grad
    w = weight.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(F.gelu(F.linear(x, w, bias)).square().sum(), w)
    torch.testing.assert_close(weight.main_grad, start + expected, rtol=1e-5, atol=1e-6)
