"""Weight gradients added straight into megatron DDP's gradient buffer (`main_grad`).

Through autograd a weight's gradient is first written as a tensor of its own, which DDP's hook
then adds into the weight's `main_grad`: under fp32 gradient buffers (fp32 master weights) that
is 2 bytes written, then 2 + 4 read and 4 written a parameter and micro-batch. Here the
product's epilogue adds into the buffer itself (`addmm` with beta 1; a bf16/fp16 product into an
fp32 buffer through torch's `out_dtype`, CUDA only), as megatron's gradient-accumulation fusion
does with apex's fused_weight_gradient_mlp_cuda. megatron's contract for it is kept: the weight's
`grad_added_to_main_grad` is set, and autograd receives an uninitialised stand-in gradient that
DDP's hook drops without adding it.

A weight must reach autograd through one such product only (not shared with another use, as a
tied output layer's is), or the stand-in would be summed with the other use's gradient.
`MEGATRON_MAMBA_WGRAD_INTO_MAIN_GRAD=0` turns it off (the benchmarks' baseline).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def enabled() -> bool:
    return os.environ.get("MEGATRON_MAMBA_WGRAD_INTO_MAIN_GRAD", "1") != "0"


def _buffer(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight`'s DDP gradient buffer where the switch is on and megatron's DDP gave it one."""
    main_grad = getattr(weight, "main_grad", None)
    if not enabled() or main_grad is None or not hasattr(weight, "grad_added_to_main_grad"):
        return None
    return main_grad


def takes_main_grad(weight: torch.Tensor) -> bool:
    """Whether `weight`'s gradient can go straight into its DDP buffer when taken now."""
    return weight.requires_grad and torch.is_grad_enabled() and _buffer(weight) is not None


def weight_gradient(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b`, the gradient of `weight`, for autograd to receive; where `weight` has a DDP
    buffer that can take the product in place, it is added there instead and autograd gets
    the stand-in."""
    main_grad = _buffer(weight)
    fits = (
        main_grad is not None
        and main_grad.shape == weight.shape
        and (main_grad.dtype == a.dtype or a.is_cuda)  # out_dtype has CUDA kernels only
    )
    if not fits:
        return a @ b
    if main_grad.dtype == a.dtype:
        main_grad.addmm_(a, b)
    else:
        torch.addmm(main_grad, a, b, out_dtype=main_grad.dtype, out=main_grad)
    weight.grad_added_to_main_grad = True
    # DDP's hook sets `param.grad = None` at once, so this memory returns to the allocator
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


class _Linear(torch.autograd.Function):
    """`F.linear` whose weight gradient goes through `weight_gradient`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        rows = dy.reshape(-1, dy.shape[-1])
        grad_x = dy @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(weight, rows.t(), x.reshape(-1, x.shape[-1]))
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; its weight gradient added straight into DDP's buffer where
    it can be (`takes_main_grad`), else torch's own autograd."""
    if not takes_main_grad(weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)
