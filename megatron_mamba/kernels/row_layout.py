"""How a row kernel finds the rows of a [s, b, h] tensor that is not contiguous.

The one-function Mamba1 mixer (kernels/mamba1_fused.py) reads its input and returns its output
batch-first; its neighbours' kernels (kernels/layer_norms.py, kernels/residual_sum.py) take such
a tensor in place, row (s, b) at `s · stride_s + b · stride_b`, instead of a copy first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from megatron_mamba import kernels


class Rows(NamedTuple):
    tensor: torch.Tensor
    strided: bool  # rows found from the s and b strides, not `row · h`
    batch: int
    stride_s: int
    stride_b: int


def rows_in_place(t: torch.Tensor) -> Rows:
    """`t` itself where it is contiguous, or a [s, b, h] tensor with contiguous rows (with the
    pending kernels on, until the kernels' GPU tests run); else a contiguous copy."""
    if t.is_contiguous() or not kernels.pending_kernels():
        return Rows(t.contiguous(), False, 1, 0, 0)
    if t.dim() == 3 and t.stride(2) == 1:
        return Rows(t, True, t.shape[1], t.stride(0), t.stride(1))
    return Rows(t.contiguous(), False, 1, 0, 0)
