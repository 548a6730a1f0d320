"""GPTNeoX's MLP activation, exact (erf) GeLU of fc1's output plus its bias, as one Triton kernel
each way.

In torch the forward is two passes over the [tokens, ffn] activation (the bias add, then GeLU)
and the backward two more after GeLU's own (the bias gradient re-reads the input gradient to sum
it over tokens). Here forward reads x once and writes gelu(x + b); backward reads the output's
gradient and x once, writes x's gradient, and sums each block of rows into a small fp32 table of
partial bias gradients that torch adds up (so the sum is deterministic: no atomics). Arithmetic
in fp32, one rounding. The torch version (models/fused.torch_bias_gelu) is the reference.
Where fc1 has added its bias in its product (models/linear_gelu.py) the same kernels run
without one: `gelu`, and `gelu_backward_and_bias_grad` for that bias's gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Tiling(NamedTuple):
    """Each way: [rows × columns] tiles and warps per program. Forward programs take one tile;
    backward programs take `rows_per_program` rows (a multiple of `backward_tile_rows`) a tile at
    a time and write one row of partial bias gradients. benchmarks/gelu_tiles.py compares
    choices on an H200."""

    block: int = 1024
    warps: int = 4
    backward_block: int = 512
    backward_warps: int = 4
    rows_per_program: int = 64
    backward_tile_rows: int = 4
    tile_rows: int = 2


TILING = Tiling()
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _forward(
    x_ptr,
    bias_ptr,  # unused without HAS_BIAS
    out_ptr,
    rows,
    columns,
    TILE_ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    EVEN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * TILE_ROWS + tl.arange(0, TILE_ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    offsets = row[:, None] * columns + cols[None, :]
    inside = cols < columns
    here = (row < rows)[:, None] & inside[None, :]
    if EVEN:  # no masks: the tiles cover x exactly
        y = tl.load(x_ptr + offsets).to(tl.float32)
    else:
        y = tl.load(x_ptr + offsets, mask=here, other=0.0).to(tl.float32)
    if HAS_BIAS:
        if EVEN:
            y += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
        else:
            y += tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)[None, :]
    out = (0.5 * y * (1.0 + tl.math.erf(y * _SQRT_HALF))).to(
        out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"
    )
    if EVEN:
        tl.store(out_ptr + offsets, out)
    else:
        tl.store(out_ptr + offsets, out, mask=here)


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
    EVEN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    block = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < columns
    if HAS_BIAS and EVEN:
        bias = tl.load(bias_ptr + cols).to(tl.float32)
    elif HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    # summed over the tile's rows once, after the loop: a sum across rows each step would be a
    # reduction between warps each step
    bias_grad = tl.zeros((TILE_ROWS, BLOCK), dtype=tl.float32)
    for i in range(0, ROWS, TILE_ROWS):
        row = block.to(tl.int64) * ROWS + i + tl.arange(0, TILE_ROWS)
        offsets = row[:, None] * columns + cols[None, :]
        if EVEN:
            y = tl.load(x_ptr + offsets).to(tl.float32)
            grad = tl.load(grad_ptr + offsets).to(tl.float32)
        else:
            # outside x: grad 0, so dx 0 there and nothing added to the bias gradient
            here = (row < rows)[:, None] & inside[None, :]
            y = tl.load(x_ptr + offsets, mask=here, other=0.0).to(tl.float32)
            grad = tl.load(grad_ptr + offsets, mask=here, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += bias[None, :]
        slope = 0.5 * (1.0 + tl.math.erf(y * _SQRT_HALF)) + y * _INV_SQRT_2PI * tl.exp(-0.5 * y * y)
        dx = grad * slope
        stored = dx.to(dx_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
        if EVEN:
            tl.store(dx_ptr + offsets, stored)
        else:
            tl.store(dx_ptr + offsets, stored, mask=here)
        bias_grad += dx
    tl.store(
        partial_ptr + block.to(tl.int64) * columns + cols, tl.sum(bias_grad, axis=0), mask=inside
    )


def _gelu_forward(x: torch.Tensor, bias: torch.Tensor | None, tiling: Tiling) -> torch.Tensor:
    """gelu(x + bias), or gelu(x) without a bias, for contiguous x."""
    columns = x.shape[-1]
    rows = x.numel() // columns if columns else 0
    out = torch.empty_like(x)
    if rows:
        tile_rows, block = tiling.tile_rows, tiling.block
        grid = (triton.cdiv(rows, tile_rows), triton.cdiv(columns, block))
        _forward[grid](
            x,
            x if bias is None else bias,
            out,
            rows,
            columns,
            TILE_ROWS=tile_rows,
            BLOCK=block,
            EVEN=rows % tile_rows == 0 and columns % block == 0,
            HAS_BIAS=bias is not None,
            num_warps=tiling.warps,
        )
    return out


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, bias)
        ctx.tiling = tiling
        return _gelu_forward(x, bias, tiling)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bias = ctx.saved_tensors
        dx, bias_grad = _backward_and_bias_grad(grad, x, bias, ctx.tiling)
        return dx, bias_grad.to(bias.dtype), None


def _backward_and_bias_grad(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, tiling: Tiling
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of gelu(x + bias) (of gelu(x) where bias is None) for the output's
    `grad`: x's, and bias's in fp32 (its sum over rows, from each program's partial sums)."""
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
    # every program writes its row of the table
    table = torch.empty if rows else torch.zeros
    partial = table(max(blocks, 1), columns, dtype=torch.float32, device=x.device)
    if rows:
        grid = (blocks, triton.cdiv(columns, tiling.backward_block))
        _backward[grid](
            grad,
            x,
            x if bias is None else bias,
            dx,
            partial,
            rows,
            columns,
            ROWS=tiling.rows_per_program,
            TILE_ROWS=tiling.backward_tile_rows,
            BLOCK=tiling.backward_block,
            EVEN=rows % tiling.rows_per_program == 0 and columns % tiling.backward_block == 0,
            HAS_BIAS=bias is not None,
            num_warps=tiling.backward_warps,
        )
    return dx, partial.sum(0)


def gelu_backward_and_bias_grad(
    grad: torch.Tensor, y: torch.Tensor, bias_dtype: torch.dtype, tiling: Tiling = TILING
) -> tuple[torch.Tensor, torch.Tensor]:
    """For y = a product plus its bias (added inside the product, `addmm`): the gradient of y
    through exact GeLU, and the bias's gradient (that gradient's sum over rows), in one pass."""
    y = y.contiguous()
    dy, bias_grad = _backward_and_bias_grad(grad, y, None, tiling)
    return dy, bias_grad.to(bias_dtype)


def gelu(y: torch.Tensor, tiling: Tiling = TILING) -> torch.Tensor:
    """Exact GeLU of y, forward only (the fc1 + GeLU function's forward, its bias already in
    the product; its backward is `gelu_backward_and_bias_grad`)."""
    return _gelu_forward(y.contiguous(), None, tiling)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, tiling: Tiling = TILING) -> torch.Tensor:
    """Exact GeLU of x + bias, bias broadcast over x's last dimension."""
    if bias.shape != (x.shape[-1],):
        raise ValueError(
            f"bias_gelu needs a bias as wide as x's last dimension, {x.shape[-1]}; got "
            f"{tuple(bias.shape)}"
        )
    return _BiasGelu.apply(x, bias, tiling)
