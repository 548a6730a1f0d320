"""On the GPU: weight gradients added straight into DDP's buffer (parallel/weight_grad.py) —
bf16 products into an fp32 buffer through torch's `out_dtype` against float64, and a bf16
hybrid model's buffers (the one-function Mamba1 mixer's projections too) against the same
model's gradients through autograd and DDP's hook."""

import pytest
import torch

from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.models.build import build_model
from megatron_mamba.parallel import weight_grad
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.ddp import wrap_ddp
from tests.unit.test_optimizer import TINY

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture(scope="module")
def runtime():
    return init_runtime(seed=0)


@pytest.mark.parametrize("buffer_dtype", [torch.float32, torch.bfloat16])
def test_the_product_is_added_into_the_buffer_in_place(buffer_dtype):
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    a = torch.randn(96, 4096, device=DEVICE, generator=generator).bfloat16()
    b = torch.randn(4096, 80, device=DEVICE, generator=generator).bfloat16()
    weight = torch.nn.Parameter(torch.zeros(96, 80, device=DEVICE, dtype=torch.bfloat16))
    start = torch.randn(96, 80, device=DEVICE, generator=generator).to(buffer_dtype)
    weight.main_grad, weight.grad_added_to_main_grad = start.clone(), False
    buffer = weight.main_grad
    stand_in = weight_grad.weight_gradient(weight, a, b)
    assert weight.main_grad is buffer and weight.grad_added_to_main_grad
    assert stand_in.shape == weight.shape and stand_in.dtype == weight.dtype
    expected = start.double() + a.double() @ b.double()
    error = (buffer.double() - expected).abs().max() / expected.abs().max()
    # fp32: the product's fp32 accumulation; bf16: one rounding of the sum
    assert error < (1e-5 if buffer_dtype == torch.float32 else 4e-3), error


def _backward(model, tokens) -> None:
    for batch in tokens:
        model(batch[:, :-1], None, None, labels=batch[:, 1:]).float().mean().backward()


def test_a_bf16_hybrids_buffers_match_autograds_gradients(runtime, monkeypatch):
    generator = torch.Generator(device=DEVICE).manual_seed(3)
    tokens = [torch.randint(0, TINY.vocab_size, (2, 65), device=DEVICE, generator=generator)]
    tokens.append(tokens[0].roll(1, dims=1))
    bf16 = RunPrecision("bf16")
    model = build_model(TINY, ParallelConfig(), bf16, cpu_initialization=False).to(DEVICE)
    twin = build_model(TINY, ParallelConfig(), bf16, cpu_initialization=False).to(DEVICE)
    twin.load_state_dict(model.state_dict())
    buffers = {}
    for fused, module in (("0", model), ("1", twin)):
        monkeypatch.setenv("MEGATRON_MAMBA_WGRAD_INTO_MAIN_GRAD", fused)
        ddp = wrap_ddp(module, grad_reduce_in_fp32=True)
        ddp.zero_grad_buffer()
        _backward(ddp, tokens)
        buffers[fused] = {n: p.main_grad.clone() for n, p in module.named_parameters()}
        taken = {n for n, p in module.named_parameters() if p.grad_added_to_main_grad}
        if fused == "1":
            for name in ("linear_qkv", "linear_fc1", "in_proj", "x_proj", "dt_proj", "out_proj"):
                assert any(f"{name}.weight" in n for n in taken), name
        else:
            assert not taken
    for name, expected in buffers["0"].items():
        got = buffers["1"][name]
        # autograd rounds each micro-batch's gradient to bf16 before DDP adds it; here no
        # rounding happens before the fp32 buffer
        error = (got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)
        assert error < 1e-2, (name, error.item())
