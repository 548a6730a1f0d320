"""LayerNorm and RMSNorm for megatron specs, as transformers computes them, sequence-parallel ready.

megatron-core's `WrappedTorchNorm` refuses sequence parallelism without Transformer Engine. These
norms are plain torch; under sequence parallelism their parameters are tagged `sequence_parallel`
so megatron's `finalize_model_grads` all-reduces their gradients across the TP group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels


def _tag_sequence_parallel(module: torch.nn.Module, config: TransformerConfig) -> None:
    for param in module.parameters():
        param.sequence_parallel = config.sequence_parallel


class LayerNorm(torch.nn.Module):
    """LayerNorm with weight and bias (GPTNeoX), as nn.LayerNorm computes it.

    torch's kernel accumulates in float32 and rounds its output once, also for bf16/fp16
    tensors, so inputs and parameters of one dtype go to it as they are (no float32 copies of
    the activations forward and backward); mixed dtypes are computed in float32."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        _tag_sequence_parallel(self, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        out = F.layer_norm(
            x.float(), x.shape[-1:], self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


class RMSNorm(torch.nn.Module):
    """RMSNorm (Llama): normalise in float32, cast back, then scale, as transformers does.

    On GPU with input and weight of one dtype, torch's fused kernel instead (float32 inside, the
    scaled result rounded once: within a rounding of transformers' in bf16, the same in fp32):
    one kernel forward and one backward where the composite launches some twenty, which counts
    where a step is bound by the host's kernel launches (tests/gpu/test_norms_gpu.py)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        _tag_sequence_parallel(self, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype == self.weight.dtype:
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def norms_of_one_input(
    x: torch.Tensor,
    first: torch.nn.Module,
    second: torch.nn.Module,
    first_batch_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first(x), second(x)): GPTNeoX's parallel residual normalises the block's input twice.
    Two LayerNorms of one eps, x and their parameters of one dtype, go to one Triton kernel each
    way on GPU (kernels/layer_norms.py); anything else to the norms themselves.
    `first_batch_first`: the kernel stores first(x) [s, b, h] batch-first, for a mixer that reads
    it so (the values are the same either way)."""
    kernel = kernels.triton_two_layer_norms(x)
    fits = (
        kernel is not None
        and isinstance(first, LayerNorm)
        and isinstance(second, LayerNorm)
        and first.eps == second.eps
        and all(p.dtype == x.dtype for p in (*first.parameters(), *second.parameters()))
    )
    if not fits:
        return first(x), second(x)
    return kernel(
        x,
        first.weight,
        first.bias,
        second.weight,
        second.bias,
        first.eps,
        first_batch_first=first_batch_first,
    )
