"""A block's residual sum, `residual + part₁ [+ part₂] [+ bias]`, as one Triton kernel.

In torch, GPTNeoX's parallel residual `x + (attn + b_attn) + (mlp + b_mlp)` is four passes over
the [tokens, hidden] activations (each bias add, then two sums), and backward sums the output's
gradient over tokens once per bias although both biases get the same gradient. Here forward
reads each input once and writes the sum (fp32 arithmetic, one rounding); the caller adds the
two bias vectors first, so backward is one sum over tokens, and the output's gradient is every
other input's. The torch version (models/fused.torch_residual_sum) is the reference and runs
off GPU. A part that is a [s, b, h] view of other storage with contiguous rows (the one-function
Mamba1 mixer's output, computed batch-first) is read in place rather than copied first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_mamba.kernels.row_layout import row_start, rows_in_place

BLOCK, WARPS = 2048, 8


@triton.jit
def _forward(
    residual_ptr,
    first_ptr,
    second_ptr,
    bias_ptr,
    out_ptr,
    columns,
    batch,
    first_s,
    first_b,
    second_s,
    second_b,
    HAS_SECOND: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    FIRST_STRIDED: tl.constexpr,
    SECOND_STRIDED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < columns
    at = row * columns + cols
    total = tl.load(residual_ptr + at, mask=inside, other=0.0).to(tl.float32)
    first_at = row_start(row, columns, batch, first_s, first_b, FIRST_STRIDED) + cols
    total += tl.load(first_ptr + first_at, mask=inside, other=0.0).to(tl.float32)
    if HAS_SECOND:
        second_at = row_start(row, columns, batch, second_s, second_b, SECOND_STRIDED) + cols
        total += tl.load(second_ptr + second_at, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        total += tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + at, total.to(dtype, fp_downcast_rounding="rtne"), mask=inside)


class _ResidualSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual: torch.Tensor, bias: torch.Tensor | None, *parts: torch.Tensor):
        residual = residual.contiguous()
        first, *rest = (rows_in_place(p) for p in parts)
        second = rest[0] if rest else first
        out = torch.empty_like(residual)
        columns = residual.shape[-1]
        rows = residual.numel() // columns if columns else 0
        if rows:
            grid = (rows, triton.cdiv(columns, BLOCK))
            _forward[grid](
                residual,
                first.tensor,
                second.tensor,
                first.tensor if bias is None else bias.contiguous(),
                out,
                columns,
                residual.shape[1] if residual.dim() == 3 else 1,
                first.stride_s,
                first.stride_b,
                second.stride_s,
                second.stride_b,
                HAS_SECOND=bool(rest),
                HAS_BIAS=bias is not None,
                FIRST_STRIDED=first.strided,
                SECOND_STRIDED=second.strided,
                BLOCK=BLOCK,
                num_warps=WARPS,
            )
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.parts = len(parts)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        bias_grad = None
        if ctx.bias_dtype is not None:
            bias_grad = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad, bias_grad, *([grad] * ctx.parts)


def residual_sum(
    residual: torch.Tensor, parts: tuple[torch.Tensor, ...], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`residual` plus one or two `parts` of its shape and dtype, plus `bias` along the last
    dimension where given."""
    if len(parts) not in (1, 2):
        raise ValueError(f"residual_sum adds one or two parts, got {len(parts)}")
    for part in parts:
        if part.shape != residual.shape or part.dtype != residual.dtype:
            raise ValueError(
                f"residual_sum needs parts like the residual ({tuple(residual.shape)}, "
                f"{residual.dtype}), got ({tuple(part.shape)}, {part.dtype})"
            )
    if bias is not None and bias.shape != residual.shape[-1:]:
        raise ValueError(
            f"residual_sum needs a bias of shape ({residual.shape[-1]},), got {tuple(bias.shape)}"
        )
    return _ResidualSum.apply(residual, bias, *parts)
