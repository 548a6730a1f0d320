"""Distillation losses as small functions over megatron's tensors.

Layer loss (CALD's `layer_distill_loss`): the MSE between student and teacher block outputs after
a parameter-free normalisation over the hidden dimension. Logits loss (CALD's): KL(teacher ‖
student) of the temperature-T softmaxes, summed over the vocabulary and averaged over tokens,
computed on vocab-parallel logits without gathering them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps

from megatron_mamba import kernels
from megatron_mamba.models.logit_losses import LogitLosses

Normalisation = Literal["layernorm", "rmsnorm", "none", "cosine"]
NORMALISATIONS = ("layernorm", "rmsnorm", "none", "cosine")


def normalise(hidden: torch.Tensor, kind: Normalisation) -> torch.Tensor:
    """Parameter-free normalisation over the last dimension (CALD's eps: 1e-5 layernorm,
    1e-6 rmsnorm); "cosine" scales to unit length, so the MSE is (2 − 2·cos) / hidden."""
    hidden = _at_least_fp32(hidden)
    if kind == "layernorm":
        return F.layer_norm(hidden, hidden.shape[-1:])
    if kind == "rmsnorm":
        return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)
    if kind == "cosine":
        return F.normalize(hidden, dim=-1)
    if kind == "none":
        return hidden
    raise ValueError(f"distill normalisation {kind!r} is unknown; expected one of {NORMALISATIONS}")


def block_mse(student: torch.Tensor, teacher: torch.Tensor, kind: Normalisation) -> torch.Tensor:
    """Mean squared error of the normalised block outputs, over every element held here."""
    return F.mse_loss(normalise(student, kind), normalise(teacher.detach(), kind))


def block_mse_and_gradient(
    student: torch.Tensor, teacher: torch.Tensor, kind: Normalisation, weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_mse` (detached) and the gradient of weight × it with respect to `student`, in the
    student's dtype, taken at once with or without autograd around: the objective attaches the
    gradient to the block's output, so nothing of the loss's own graph (fp32 copies of both
    normalised outputs) waits for backward, and recomputed blocks can be served too. On GPU
    with layernorm, one kernel (kernels/layer_mse.py) of which this is the reference."""
    kernel = kernels.triton_layer_mse(student, teacher) if kind == "layernorm" else None
    if kernel is not None:
        return kernel(student, teacher, weight)
    with torch.enable_grad():
        leaf = _at_least_fp32(student.detach()).requires_grad_()
        loss = block_mse(leaf, teacher, kind)
        (grad,) = torch.autograd.grad(loss * weight, leaf)
    return loss.detach(), grad.to(student.dtype)


def ce_and_logits_kl(student, teacher, labels, vocab_size: int, temperature: float | None):
    """Per-token CE and KL [b, s] of vocab-parallel logits [b, s, vocab/TP] over the real
    vocabulary (models/logit_losses.py); no KL when `temperature` is None."""
    teacher = teacher.detach() if temperature is not None else None
    group = ps.get_tensor_model_parallel_group()
    return LogitLosses.apply(student, teacher, labels, vocab_size, temperature or 1.0, group)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
