"""GPTNeoX's MLP activation, exact (erf) GeLU of fc1's output plus its bias, as one Triton kernel
each way.

In torch the forward is two passes over the [tokens, ffn] activation (the bias add, then GeLU)
and the backward two more after GeLU's own (the bias gradient re-reads the input gradient to sum
it over tokens). Here forward reads x once and writes gelu(x + b); backward reads the output's
gradient and x once, writes x's gradient, and sums each block of rows into a small fp32 table of
partial bias gradients that torch adds up (so the sum is deterministic: no atomics). Arithmetic
in fp32, one rounding. The torch version (models/fused.torch_bias_gelu) is the reference.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Tiling(NamedTuple):
    """Columns per program and warps, each way; rows summed per backward program (each one
    writes a row of partial bias gradients), taken `backward_tile_rows` at a time (a divisor of
    rows_per_program). benchmarks/bias_gelu_tiling.py and gelu_tiles.py compare choices."""

    block: int = 1024
    warps: int = 4
    backward_block: int = 1024
    backward_warps: int = 4
    rows_per_program: int = 64
    backward_tile_rows: int = 1


TILING = Tiling()
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _forward(x_ptr, bias_ptr, out_ptr, columns, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < columns
    y = tl.load(x_ptr + row * columns + cols, mask=inside, other=0.0).to(tl.float32)
    y += tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    out = 0.5 * y * (1.0 + tl.math.erf(y * _SQRT_HALF))
    target = out_ptr + row * columns + cols
    tl.store(target, out.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)


@triton.jit
def _backward(
    grad_ptr,
    x_ptr,
    bias_ptr,
    dx_ptr,
    partial_ptr,
    rows,
    columns,
    ROWS: tl.constexpr,
    TILE_ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < columns
    bias = tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    bias_grad = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, ROWS, TILE_ROWS):
        row = block.to(tl.int64) * ROWS + i + tl.arange(0, TILE_ROWS)
        here = (row < rows)[:, None] & inside[None, :]
        offsets = row[:, None] * columns + cols[None, :]
        y = tl.load(x_ptr + offsets, mask=here, other=0.0).to(tl.float32) + bias[None, :]
        grad = tl.load(grad_ptr + offsets, mask=here, other=0.0).to(tl.float32)
        slope = 0.5 * (1.0 + tl.math.erf(y * _SQRT_HALF)) + y * _INV_SQRT_2PI * tl.exp(-0.5 * y * y)
        dx = grad * slope
        dtype = dx_ptr.dtype.element_ty
        tl.store(dx_ptr + offsets, dx.to(dtype, fp_downcast_rounding="rtne"), mask=here)
        bias_grad += tl.sum(tl.where(here, dx, 0.0), axis=0)
    tl.store(partial_ptr + block.to(tl.int64) * columns + cols, bias_grad, mask=inside)


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        x = x.contiguous()
        columns = x.shape[-1]
        rows = x.numel() // columns if columns else 0
        out = torch.empty_like(x)
        if rows:
            grid = (rows, triton.cdiv(columns, tiling.block))
            _forward[grid](x, bias, out, columns, BLOCK=tiling.block, num_warps=tiling.warps)
        ctx.save_for_backward(x, bias)
        ctx.tiling = tiling
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bias = ctx.saved_tensors
        dx, bias_grad = _backward_and_bias_grad(grad, x, bias, ctx.tiling)
        return dx, bias_grad.to(bias.dtype), None


def _backward_and_bias_grad(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, tiling: Tiling
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of gelu(x + bias) for the output's `grad`: x's, and bias's in fp32 (its
    sum over rows, from each program's partial sums)."""
    if tiling.rows_per_program % tiling.backward_tile_rows:
        raise ValueError(
            f"backward_tile_rows={tiling.backward_tile_rows} must divide "
            f"rows_per_program={tiling.rows_per_program}"
        )
    grad = grad.contiguous()
    columns = x.shape[-1]
    rows = x.numel() // columns if columns else 0
    dx = torch.empty_like(x)
    blocks = triton.cdiv(rows, tiling.rows_per_program)
    partial = torch.zeros(max(blocks, 1), columns, dtype=torch.float32, device=x.device)
    if rows:
        grid = (blocks, triton.cdiv(columns, tiling.backward_block))
        _backward[grid](
            grad,
            x,
            bias,
            dx,
            partial,
            rows,
            columns,
            ROWS=tiling.rows_per_program,
            TILE_ROWS=tiling.backward_tile_rows,
            BLOCK=tiling.backward_block,
            num_warps=tiling.backward_warps,
        )
    return dx, partial.sum(0)


def gelu_backward_and_bias_grad(
    grad: torch.Tensor, y: torch.Tensor, bias_dtype: torch.dtype, tiling: Tiling = TILING
) -> tuple[torch.Tensor, torch.Tensor]:
    """For y = a product plus its bias (added inside the product, `addmm`): the gradient of y
    through exact GeLU, and the bias's gradient (that gradient's sum over rows), in one pass."""
    y = y.contiguous()
    dy, bias_grad = _backward_and_bias_grad(grad, y, y.new_zeros(y.shape[-1]), tiling)
    return dy, bias_grad.to(bias_dtype)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, tiling: Tiling = TILING) -> torch.Tensor:
    """Exact GeLU of x + bias, bias broadcast over x's last dimension."""
    if bias.shape != (x.shape[-1],):
        raise ValueError(
            f"bias_gelu needs a bias as wide as x's last dimension, {x.shape[-1]}; got "
            f"{tuple(bias.shape)}"
        )
    return _BiasGelu.apply(x, bias, tiling)
