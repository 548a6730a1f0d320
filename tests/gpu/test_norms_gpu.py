"""On the GPU: RMSNorm through torch's fused kernel against a float64 computation and against
transformers' Llama norm, forward and backward, in one kernel each way."""

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.profiler import ProfilerActivity, profile
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from megatron_mamba.models.norms import RMSNorm

pytestmark = pytest.mark.gpu

HIDDEN = 2048


def _norm(dtype: torch.dtype) -> RMSNorm:
    config = TransformerConfig(
        num_layers=1, hidden_size=HIDDEN, num_attention_heads=1, params_dtype=dtype
    )
    norm = RMSNorm(config, HIDDEN, eps=1e-5).cuda()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return norm


def _float64(x, weight, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rms_norm_matches_float64_and_transformers(dtype, tolerance):
    norm = _norm(dtype)
    x = torch.randn(3, 512, HIDDEN, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    y = norm(x)
    y.backward(grad)
    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    expected = _float64(x64, w64, norm.eps)
    expected.backward(grad.double())

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(y, expected) < tolerance
    assert rel(x.grad, x64.grad) < tolerance
    assert rel(norm.weight.grad, w64.grad) < tolerance
    hf = LlamaRMSNorm(HIDDEN, eps=norm.eps).cuda().to(dtype)
    with torch.no_grad():
        hf.weight.copy_(norm.weight)
        assert rel(norm(x), hf(x).double()) < tolerance


def test_rms_norm_is_one_kernel_forward_and_one_backward():
    norm = _norm(torch.bfloat16)
    x = torch.randn(4096, HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    norm(x).sum().backward()  # warm up
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        y = norm(x)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) == 1, kernels
    grad = torch.ones_like(y)
    x.grad = None  # (no accumulation into the warm-up's gradient)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        y.backward(grad)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) <= 3, kernels  # dx, dw and dw's reduction (the composite: ~20)
