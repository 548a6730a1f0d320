"""SwiGLU on megatron's fc1 output: forward and backward each one Triton kernel.

megatron's gated MLP keeps gate and up side by side in one [.., 2f] tensor. torch's silu and
product on its two halves read strided views (its slow elementwise path), keep silu(gate) for
backward, and backward joins the halves' gradients with a cat: measured on the DPO benchmark's
Mistral-shaped model, some 9 of its 81 ms of GPU time (benchmarks/RESULTS.md). Here forward reads
both halves and writes silu(gate)·up; backward reads them again with the output's gradient and
writes the [.., 2f] gradient in place of the cat; only the input is kept. Arithmetic in fp32,
one rounding to the input's dtype. The torch version (models/fused.torch_swiglu) is the
reference and runs off GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK, WARPS = 1024, 4


@triton.jit
def _forward(x_ptr, out_ptr, f, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < f
    gate = tl.load(x_ptr + row * 2 * f + cols, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * f + f + cols, mask=inside, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(
        out_ptr + row * f + cols,
        out.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
        mask=inside,
    )


@triton.jit
def _backward(x_ptr, grad_ptr, dx_ptr, f, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < f
    gate = tl.load(x_ptr + row * 2 * f + cols, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * f + f + cols, mask=inside, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + row * f + cols, mask=inside, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    d_gate = grad * up * sig * (1.0 + gate * (1.0 - sig))
    d_up = grad * gate * sig
    dtype = dx_ptr.dtype.element_ty
    tl.store(
        dx_ptr + row * 2 * f + cols, d_gate.to(dtype, fp_downcast_rounding="rtne"), mask=inside
    )
    tl.store(
        dx_ptr + row * 2 * f + f + cols, d_up.to(dtype, fp_downcast_rounding="rtne"), mask=inside
    )


def _grid(rows: int, f: int) -> tuple[int, int]:
    return rows, triton.cdiv(f, BLOCK)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        f = x.shape[-1] // 2
        out = x.new_empty(*x.shape[:-1], f)
        rows = x.numel() // (2 * f) if f else 0
        if rows:
            _forward[_grid(rows, f)](x, out, f, BLOCK=BLOCK, num_warps=WARPS)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        grad = grad.contiguous()
        f = x.shape[-1] // 2
        dx = torch.empty_like(x)
        rows = x.numel() // (2 * f) if f else 0
        if rows:
            _backward[_grid(rows, f)](x, grad, dx, f, BLOCK=BLOCK, num_warps=WARPS)
        return dx


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up with x = [gate | up] along its last dimension (of even size)."""
    if x.shape[-1] % 2:
        raise ValueError(f"SwiGLU needs an even last dimension (gate | up), got {x.shape[-1]}")
    return _SwiGLU.apply(x)
