"""On the GPU: the Triton RoPE (kernels/rope.py) against megatron's unfused RoPE in float64,
forward and backward, partial (Pythia) and full (Llama, a key viewed out of a fused tensor); one
kernel each way; and our models' logits with our kernels as with the torch references
(MEGATRON_MAMBA_REFERENCE_KERNELS)."""

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from torch.profiler import ProfilerActivity, profile

from megatron_mamba import kernels
from tests.helpers.hf_tiny import (
    assert_same_logits_and_grads,
    cuda_twin_logits_and_grads,
    tiny_gpt_neox,
    tiny_llama,
)

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels.rope import rope  # noqa: E402


def _angles(s: int, rotary: int) -> torch.Tensor:
    """megatron's non-interleaved angles: the half-dimension frequencies twice, [s, 1, 1, r]."""
    inv = 10000 ** (-torch.arange(0, rotary, 2, dtype=torch.float64, device="cuda") / rotary)
    half = torch.outer(torch.arange(s, dtype=torch.float64, device="cuda"), inv)
    return torch.cat([half, half], dim=-1)[:, None, None, :]


# (s, b, heads, head_dim, rotary, a strided view of a wider tensor)
SHAPES = [(64, 2, 8, 256, 64, False), (96, 3, 4, 128, 128, True), (5, 1, 3, 24, 8, False)]


@pytest.mark.parametrize("s,b,heads,head_dim,rotary,strided", SHAPES)
def test_rope_matches_megatrons_in_float64(s, b, heads, head_dim, rotary, strided):
    """fp32 to 1e-5; bf16 to one rounding of the fp32 result (2^-8 relative, plus 1e-5 of the
    largest value for results near a cancellation)."""
    torch.manual_seed(0)
    wide = torch.randn(s, b, heads + 2 * strided, head_dim, dtype=torch.float64, device="cuda")
    t = wide[:, :, 2:] if strided else wide
    freqs = _angles(s, rotary)
    grad = torch.randn(s, b, heads, head_dim, dtype=torch.float64, device="cuda")
    for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2**-8)):
        x = t.to(dtype).requires_grad_()
        got = rope(x, freqs.float())
        (got_grad,) = torch.autograd.grad(got, x, grad.to(dtype))
        # against float64 on the same rounded inputs
        x64 = x.detach().double().requires_grad_()
        ref = _apply_rotary_pos_emb_bshd(x64, freqs)
        (ref_grad,) = torch.autograd.grad(ref, x64, grad.to(dtype).double())
        for a, b_ in ((got, ref), (got_grad, ref_grad)):
            bound = rel * b_.abs() + 1e-5 * b_.abs().max()
            assert ((a.double() - b_).abs() <= bound).all(), (dtype, (a.double() - b_).abs().max())


def test_rope_is_one_kernel_each_way_and_the_default(monkeypatch):
    t = torch.randn(32, 2, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    monkeypatch.setenv("MEGATRON_MAMBA_REFERENCE_KERNELS", "1")
    assert kernels.triton_rope(t) is None
    monkeypatch.delenv("MEGATRON_MAMBA_REFERENCE_KERNELS")
    assert kernels.triton_rope(t) is rope
    freqs = _angles(32, 64).float()
    rope(t, freqs).sum().backward()  # compiled before profiling
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        rope(t, freqs).backward(torch.ones_like(t))
        torch.cuda.synchronize()
    launches = [e for e in prof.key_averages() if e.key == "_rotate"]
    assert len(launches) == 1 and launches[0].count == 2


@pytest.mark.parametrize("make", [tiny_gpt_neox, tiny_llama])
def test_models_give_the_same_logits_and_gradients_with_the_kernel(monkeypatch, make):
    env = "MEGATRON_MAMBA_REFERENCE_KERNELS"
    assert_same_logits_and_grads(cuda_twin_logits_and_grads(monkeypatch, make, env, ("1", "0")))
