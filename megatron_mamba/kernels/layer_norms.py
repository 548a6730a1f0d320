"""GPTNeoX's two LayerNorms of one input (the parallel residual's ln1(x) for the mixer and ln2(x)
for the MLP) as one Triton kernel each way.

torch runs them as two forward kernels reading x twice, and backward as two kernels per norm (the
input gradient, then the weight and bias gradients re-reading x and the output gradient) plus the
sum of the two input gradients. LayerNorm's input gradient is linear in g = dy · w, so here
backward forms g = dy₁ w₁ + dy₂ w₂ and applies the normalisation's transpose once:
dx = rstd (g − mean(g) − x̂ mean(g x̂)); each program sums its rows' dy x̂ and dy into a row of
partial weight and bias gradients that torch adds up (deterministic: no atomics). Forward reads x
once and writes both outputs. fp32 arithmetic, one rounding per output; torch's
F.layer_norm, applied twice, is the reference.

The first output may be written batch-first (a [s, b, h] view of [b, s, h] storage) and its
gradient read in whatever [s, b, h] strides it comes back in: the one-function Mamba1 mixer
(kernels/mamba1_fused.py) reads its input and returns its input's gradient batch-first, and the
layout is then no copy of its own either way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_mamba.kernels.row_layout import row_start, rows_in_place

ROWS_PER_PROGRAM = 32  # backward: rows summed per row of partial weight gradients


@triton.jit
def _affine(normed, w_ptr, b_ptr, y_ptr, cols, inside):
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    y = (normed * w + b).to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(y_ptr + cols, y, mask=inside)


@triton.jit
def _forward(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y1_ptr, y2_ptr, mean_ptr, rstd_ptr, columns, eps,
    batch, y1_s, y1_b,
    BLOCK: tl.constexpr, Y1_STRIDED: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < columns
    x = tl.load(x_ptr + row * columns + cols, mask=inside, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / columns
    centred = tl.where(inside, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / columns + eps)
    normed = centred * rstd
    y1_row = row_start(row, columns, batch, y1_s, y1_b, Y1_STRIDED)
    _affine(normed, w1_ptr, b1_ptr, y1_ptr + y1_row, cols, inside)
    _affine(normed, w2_ptr, b2_ptr, y2_ptr + row * columns, cols, inside)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward(
    x_ptr, dy1_ptr, dy2_ptr, w1_ptr, w2_ptr, mean_ptr, rstd_ptr, dx_ptr, partial_ptr,
    rows, columns, batch, dy1_s, dy1_b,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, DY1_STRIDED: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < columns
    w1 = tl.load(w1_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    w2 = tl.load(w2_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    dw1 = tl.zeros((BLOCK,), dtype=tl.float32)
    db1 = tl.zeros((BLOCK,), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK,), dtype=tl.float32)
    db2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = block.to(tl.int64) * ROWS + i
        here = inside & (row < rows)
        at = row * columns + cols
        x = tl.load(x_ptr + at, mask=here, other=0.0).to(tl.float32)
        dy1_at = row_start(row, columns, batch, dy1_s, dy1_b, DY1_STRIDED) + cols
        dy1 = tl.load(dy1_ptr + dy1_at, mask=here, other=0.0).to(tl.float32)
        dy2 = tl.load(dy2_ptr + at, mask=here, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row, mask=row < rows, other=0.0)
        rstd = tl.load(rstd_ptr + row, mask=row < rows, other=0.0)
        normed = tl.where(here, (x - mean) * rstd, 0.0)
        g = dy1 * w1 + dy2 * w2
        dx = rstd * (g - tl.sum(g, 0) / columns - normed * (tl.sum(g * normed, 0) / columns))
        dtype = dx_ptr.dtype.element_ty
        tl.store(dx_ptr + at, dx.to(dtype, fp_downcast_rounding="rtne"), mask=here)
        dw1 += dy1 * normed
        db1 += dy1
        dw2 += dy2 * normed
        db2 += dy2
    table = partial_ptr + block.to(tl.int64) * 4 * columns + cols
    tl.store(table, dw1, mask=inside)
    tl.store(table + columns, db1, mask=inside)
    tl.store(table + 2 * columns, dw2, mask=inside)
    tl.store(table + 3 * columns, db2, mask=inside)


def _warps(block: int) -> int:
    return min(16, max(1, block // 256))


class _TwoLayerNorms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, eps: float, first_batch_first: bool):
        x = x.contiguous()
        columns = x.shape[-1]
        rows = x.numel() // columns
        first_batch_first = first_batch_first and x.dim() == 3
        y1_rows = (1, 0, 0)  # batch, strides of s and b: unused where y1 is contiguous
        if first_batch_first:
            y1 = x.new_empty(x.shape[1], x.shape[0], columns).transpose(0, 1)
            y1_rows = (x.shape[1], y1.stride(0), y1.stride(1))
        else:
            y1 = torch.empty_like(x)
        y2 = torch.empty_like(x)
        mean = torch.empty(rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        block = triton.next_power_of_2(columns)
        if rows:
            _forward[(rows,)](
                x, w1, b1, w2, b2, y1, y2, mean, rstd, columns, eps, *y1_rows,
                BLOCK=block, Y1_STRIDED=first_batch_first, num_warps=_warps(block),
            )  # fmt: skip
        ctx.save_for_backward(x, w1, w2, mean, rstd)
        return y1, y2

    @staticmethod
    def backward(ctx, dy1, dy2):
        x, w1, w2, mean, rstd = ctx.saved_tensors
        columns = x.shape[-1]
        rows = x.numel() // columns
        dy1 = torch.zeros_like(x) if dy1 is None else dy1
        dy1, strided, batch, dy1_s, dy1_b = rows_in_place(dy1)
        dy2 = torch.zeros_like(x) if dy2 is None else dy2.contiguous()
        dx = torch.empty_like(x)
        blocks = max(1, triton.cdiv(rows, ROWS_PER_PROGRAM))
        partial = torch.zeros(blocks, 4, columns, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(columns)
        if rows:
            _backward[(blocks,)](
                x, dy1, dy2, w1, w2, mean, rstd, dx, partial, rows, columns, batch, dy1_s, dy1_b,
                ROWS=ROWS_PER_PROGRAM, BLOCK=block, DY1_STRIDED=strided,
                num_warps=_warps(block),
            )  # fmt: skip
        dw1, db1, dw2, db2 = partial.sum(0).to(w1.dtype).unbind(0)
        return dx, dw1, db1, dw2, db2, None, None


def two_layer_norms(
    x, w1, b1, w2, b2, eps: float, first_batch_first: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer_norm(x, w1, b1), layer_norm(x, w2, b2)) over x's last dimension, weights and
    biases all of x's width; with `first_batch_first`, a [s, b, h] x's first output is stored
    batch-first."""
    width = x.shape[-1]
    for name, p in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if p.shape != (width,):
            raise ValueError(
                f"two_layer_norms needs {name} as wide as x's last dimension, {width}; got "
                f"{tuple(p.shape)}"
            )
    return _TwoLayerNorms.apply(x, w1, b1, w2, b2, eps, first_batch_first)
