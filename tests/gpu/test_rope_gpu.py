"""On the GPU: the Triton RoPE (kernels/rope.py) against megatron's unfused RoPE in float64,
forward and backward, partial (Pythia) and full (Llama, a key viewed out of a fused tensor); one
kernel each way; the same on megatron's fused QKV output (`qkv_rope`, its gradient without a
cat) against megatron's split and RoPE; and our models' logits with our kernels as with the
torch references (MEGATRON_MAMBA_REFERENCE_KERNELS)."""

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

from megatron_mamba.kernels.rope import qkv_rope, rope  # noqa: E402


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


# (s, b, groups, query heads per group, head_dim, rotary): Pythia-1b's attention, a GQA shape
QKV_SHAPES = [(64, 2, 8, 1, 256, 64), (33, 3, 2, 4, 64, 64), (5, 1, 1, 3, 24, 8)]


@pytest.mark.parametrize("s,b,groups,per_group,head_dim,rotary", QKV_SHAPES)
def test_qkv_rope_matches_megatrons_split_and_rope(s, b, groups, per_group, head_dim, rotary):
    torch.manual_seed(0)
    width = (per_group + 2) * head_dim
    mixed = torch.randn(s, b, groups, width, dtype=torch.float64, device="cuda")
    freqs = _angles(s, rotary)
    grads = [  # laid out [b, heads, s, head_dim] beneath, as cuDNN's attention returns them
        torch.randn(b, groups * heads, s, head_dim, dtype=torch.float64, device="cuda").permute(
            2, 0, 1, 3
        )
        for heads in (per_group, 1, 1)
    ]
    for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2**-8)):
        x = mixed.to(dtype).requires_grad_()
        got = qkv_rope(x, freqs.float(), per_group)
        torch.autograd.backward(got, [g.to(dtype) for g in grads])
        x64 = x.detach().double().requires_grad_()
        q, k, v = torch.split(x64, [per_group * head_dim, head_dim, head_dim], dim=3)
        want = (
            _apply_rotary_pos_emb_bshd(q.reshape(s, b, -1, head_dim), freqs),
            _apply_rotary_pos_emb_bshd(k, freqs),
            v,
        )
        torch.autograd.backward(want, [g.to(dtype).double() for g in grads])
        for a, b_ in (*zip(got, want, strict=True), (x.grad, x64.grad)):
            bound = rel * b_.abs() + 1e-5 * b_.abs().max()
            assert ((a.double() - b_).abs() <= bound).all(), (dtype, (a.double() - b_).abs().max())
        assert got[2].data_ptr() == x.data_ptr() + (per_group + 1) * head_dim * x.element_size()


def test_qkv_rope_gradient_needs_no_cat_nor_copy():
    x = torch.randn(64, 2, 8, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    freqs = _angles(64, 64).float()
    outputs = qkv_rope(x, freqs, 1)
    grads = [torch.ones_like(t) for t in outputs]
    torch.autograd.backward(qkv_rope(x, freqs, 1), grads)  # compiled before profiling
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.autograd.backward(qkv_rope(x, freqs, 1), grads)
        torch.cuda.synchronize()
    names = {e.key: e.count for e in prof.key_averages()}
    joins = [n for n in names if n in ("aten::cat", "aten::copy_") or "CatArray" in n]
    assert names.get("_rotate") == 5 and not joins, names  # q, k forward; q, k, v backward


@pytest.mark.parametrize("make", [tiny_gpt_neox, tiny_llama])
def test_models_give_the_same_logits_and_gradients_with_the_kernel(monkeypatch, make):
    env = "MEGATRON_MAMBA_REFERENCE_KERNELS"
    assert_same_logits_and_grads(cuda_twin_logits_and_grads(monkeypatch, make, env, ("1", "0")))
