"""Small elementwise fusions, compiled with torch.compile on GPU when MEGATRON_MAMBA_COMPILE=1;
SwiGLU and GPTNeoX's bias + GeLU run our Triton kernels on GPU instead (kernels/swiglu.py,
kernels/bias_gelu.py), these torch ops elsewhere.

Measured on an H200 (benchmarks/RESULTS.md), the compiled versions cost more host time per call
than they save on the GPU at Pythia-1b size, so they are off by default.

megatron's linear layers add biases as separate kernels; fusing bias + activation and the block's
residual sum with its biases (kernels/residual_sum.py) into single kernels removes whole passes
over the activations. On CPU the same functions run eagerly, so the math is identical and tests
need no compiler.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from megatron_mamba import kernels


def _compile_on_gpu(fn: Callable) -> Callable:
    compiled = None

    def dispatch(*args):
        nonlocal compiled
        if not args[0].is_cuda or os.environ.get("MEGATRON_MAMBA_COMPILE", "0") != "1":
            return fn(*args)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True)
        return compiled(*args)

    dispatch.__doc__ = fn.__doc__
    dispatch.__name__ = fn.__name__
    return dispatch


@_compile_on_gpu
def torch_bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GeLU of x + bias, as GPTNeoX uses."""
    return F.gelu(x + bias)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`torch_bias_gelu`, by one Triton kernel each way on GPU (kernels/bias_gelu.py)."""
    kernel = kernels.triton_bias_gelu(x)
    return torch_bias_gelu(x, bias) if kernel is None else kernel(x, bias)


@_compile_on_gpu
def torch_swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, with x = [gate, up] along the last dimension (megatron's fc1 layout)."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """`torch_swiglu`, by one Triton kernel each way on GPU (kernels/swiglu.py)."""
    kernel = kernels.triton_swiglu(x)
    return torch_swiglu(x) if kernel is None else kernel(x)


def torch_residual_sum(
    residual: torch.Tensor, parts: tuple[torch.Tensor, ...], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`residual` + each of `parts` (+ `bias` along the last dimension where given)."""
    out = residual
    for part in parts:
        out = out + part
    return out if bias is None else out + bias


def residual_sum(
    residual: torch.Tensor, parts: tuple[torch.Tensor, ...], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`torch_residual_sum`, by one Triton kernel on GPU (kernels/residual_sum.py), whose
    backward sums the output's gradient over tokens once for the bias. Parts of another dtype
    (torch would promote) take the torch version."""
    kernel = kernels.triton_residual_sum(residual)
    if kernel is None or any(part.dtype != residual.dtype for part in parts):
        return torch_residual_sum(residual, parts, bias)
    return kernel(residual, parts, bias)
