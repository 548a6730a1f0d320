"""fc1 and exact GeLU on one TP rank as one autograd function (GPTNeoX's MLP).

Through autograd, backward runs torch's GeLU backward and then, for `addmm`'s bias, sums its
result over tokens again: another read of the [tokens, ffn] gradient (0.77 ms a step of
Pythia-1b's attention-only model on an H200, benchmarks/RESULTS.md). Here GeLU's backward and the
bias's gradient are one kernel (kernels/bias_gelu.gelu_backward_and_bias_grad); the products are
the ones autograd would run; forward keeps the bias inside fc1's product, and GeLU runs as
kernels/bias_gelu.gelu; the weight's gradient goes straight into DDP's buffer where there is one
(parallel/weight_grad.py). Off GPU the same function runs torch's ops. Opt-in with
MEGATRON_MAMBA_PENDING_KERNELS=1 until the step measures faster with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_mamba import kernels
from megatron_mamba.parallel.weight_grad import weight_gradient


class _LinearGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight, y)
        ctx.bias_dtype = bias.dtype
        kernel = kernels.triton_gelu(y)
        return F.gelu(y) if kernel is None else kernel(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, y = ctx.saved_tensors
        kernel = kernels.triton_gelu_backward_and_bias_grad(y)
        if kernel is None:
            dy = torch.ops.aten.gelu_backward(grad, y)
            bias_grad = dy.reshape(-1, dy.shape[-1]).sum(0).to(ctx.bias_dtype)
        else:
            dy, bias_grad = kernel(grad, y, ctx.bias_dtype)
        need_x, need_weight, need_bias = ctx.needs_input_grad
        dx = dy @ weight if need_x else None
        dweight = None
        if need_weight:
            rows = dy.reshape(-1, dy.shape[-1]).t()
            dweight = weight_gradient(weight, rows, x.reshape(-1, x.shape[-1]))
        return dx, dweight, bias_grad if need_bias else None


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x @ weightᵀ + bias), exact GeLU, with x [..., in], weight [out, in], bias [out]."""
    return _LinearGelu.apply(x.contiguous(), weight, bias)
