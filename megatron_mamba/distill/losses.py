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
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_mamba.models.logit_losses import LocalLogitLosses
from megatron_mamba.models.vocab import without_padding

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
    teacher = teacher.detach().to(student.dtype)  # a lower-precision teacher's blocks
    return F.mse_loss(normalise(student, kind), normalise(teacher, kind))


class _VocabParallelKL(torch.autograd.Function):
    """Per-token KL(softmax(t/T) ‖ softmax(s/T)) with the vocabulary split over the TP group.

    Forward needs each softmax's global max and normaliser (two all-reduces each) and the
    per-token sum over all shards (one more); backward is local: (p_s − p_t) / T."""

    @staticmethod
    def forward(ctx, student, teacher, temperature, group):
        log_p_s = _log_softmax(_at_least_fp32(student) / temperature, group)
        log_p_t = _log_softmax(_at_least_fp32(teacher) / temperature, group)
        p_t = log_p_t.exp()
        # entries masked to -inf on both sides (padded vocabulary) carry no probability: 0, not nan
        kl = (p_t * (log_p_t - log_p_s)).where(p_t > 0, 0.0).sum(-1)
        torch.distributed.all_reduce(kl, group=group)
        ctx.save_for_backward(log_p_s, p_t)
        ctx.temperature, ctx.student_dtype = temperature, student.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        log_p_s, p_t = ctx.saved_tensors
        grad = (log_p_s.exp() - p_t) / ctx.temperature * grad_kl.unsqueeze(-1)
        return grad.to(ctx.student_dtype), None, None, None


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _log_softmax(logits: torch.Tensor, group) -> torch.Tensor:
    maximum = logits.max(-1, keepdim=True).values
    torch.distributed.all_reduce(maximum, op=torch.distributed.ReduceOp.MAX, group=group)
    shifted = logits - maximum
    normaliser = shifted.exp().sum(-1, keepdim=True)
    torch.distributed.all_reduce(normaliser, group=group)
    return shifted - normaliser.log()


def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token KL over vocab-parallel logits [..., vocab/TP] (student gets the gradient)."""
    group = ps.get_tensor_model_parallel_group()
    return _VocabParallelKL.apply(student, teacher.detach(), temperature, group)


def ce_and_logits_kl(student, teacher, labels, vocab_size: int, temperature: float | None):
    """Per-token CE and KL [b, s] of logits [b, s, vocab/TP] over the real vocabulary; no
    teacher KL when `temperature` is None."""
    teacher = teacher.detach() if temperature is not None else None
    if ps.get_tensor_model_parallel_world_size() == 1:
        return LocalLogitLosses.apply(student, teacher, labels, vocab_size, temperature or 1.0)
    student = without_padding(student, vocab_size)
    # the KL first: megatron's cross-entropy shifts the logits in place
    kl = (
        logits_kl(student, without_padding(teacher, vocab_size), temperature)
        if teacher is not None
        else None
    )
    return vocab_parallel_cross_entropy(student, labels), kl
