"""How a row kernel finds the rows of a [s, b, h] tensor that is not contiguous.

The one-function Mamba1 mixer (kernels/mamba1_fused.py) reads its input and returns its output
batch-first; its neighbours' kernels (kernels/layer_norms.py, kernels/residual_sum.py) take such
a tensor in place, row (s, b) at `s · stride_s + b · stride_b`, instead of a copy first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Rows(NamedTuple):
    tensor: torch.Tensor
    strided: bool  # rows found from the s and b strides, not `row · h`
    batch: int
    stride_s: int
    stride_b: int


def copied_rows(t: torch.Tensor) -> Rows:
    """`t` contiguous, whatever its strides (what the kernels read before `rows_in_place`; the
    baseline its GPU tests count copies against)."""
    return Rows(t.contiguous(), False, 1, 0, 0)


def rows_in_place(t: torch.Tensor) -> Rows:
    """A [s, b, h] `t` with contiguous rows as it is; anything else contiguous (itself where it
    already is)."""
    in_place = not t.is_contiguous() and t.dim() == 3 and t.stride(2) == 1
    if not in_place:
        return copied_rows(t)
    return Rows(t, True, t.shape[1], t.stride(0), t.stride(1))


@triton.jit
def row_start(row, columns, batch, stride_s, stride_b, STRIDED: tl.constexpr):
    """Where row `row` of a [s, b, h] tensor (rows in (s, b) order) starts: `row · columns`
    where the tensor is contiguous, else from its s and b strides (`Rows`)."""
    if STRIDED:
        return (row // batch) * stride_s + (row % batch) * stride_b
    return row * columns
