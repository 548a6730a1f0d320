"""Per-token cross-entropy (and distillation KL) over logits whose vocabulary is on one rank.

These losses are memory-bound: the logits of 8192 tokens over Pythia's vocabulary are 1.6 GB in
fp32. megatron's vocab-parallel cross-entropy plus an autograd graph of torch ops make some thirty
passes over fp32 copies of them and keep two or three such copies for backward. Here the losses
and their gradients are computed together in forward and only the gradients are kept, in the
logits' own dtype: on GPU by one Triton kernel that reads each row twice (kernels/logit_losses.py),
elsewhere by torch ops over chunks of rows (`losses_and_gradients`, also the kernel's reference).
The losses are per token, so backward is exact: each row's kept gradient times that token's
upstream gradient.

Under TP the vocabulary is split and the vocab-parallel versions are used (`cross_entropy`
dispatches); labels of -1 carry no loss, as in `LanguageModel`.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_mamba.models.vocab import without_padding

CHUNK_ELEMENTS = 2**25  # 128 MB of fp32 per temporary


class LocalLogitLosses(torch.autograd.Function):
    """(ce, kl) per token [b, s] from logits [b, s, padded vocab] holding the whole vocabulary.

    kl = KL(softmax(teacher/T) ‖ softmax(student/T)) summed over the vocabulary; None without a
    teacher. Only `student` receives a gradient; columns ≥ vocab_size are ignored."""

    @staticmethod
    def forward(ctx, student, teacher, labels, vocab_size: int, temperature: float):
        rows, padded = student.shape[:-1].numel(), student.shape[-1]
        logits = student.reshape(rows, padded)
        taught = teacher.reshape(rows, padded) if teacher is not None else None
        labels = labels.reshape(rows)
        compute = _triton_kernel(student) or losses_and_gradients
        ce, kl, grads = compute(
            logits, taught, labels, vocab_size, temperature, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(labels < 0, *grads)
        ctx.shape = student.shape
        shape = student.shape[:-1]
        return ce.view(shape), kl.view(shape) if kl is not None else None

    @staticmethod
    def backward(ctx, grad_ce, grad_kl):
        ignored, *kept = ctx.saved_tensors
        rows = ignored.shape[0]
        grad = torch.zeros_like(kept[0]) if grad_ce is None else None
        if grad_ce is not None:  # an ignored label's row carries no CE gradient
            upstream = grad_ce.reshape(rows, 1).masked_fill(ignored.unsqueeze(1), 0.0)
            grad = torch.mul(kept[0], upstream, out=torch.empty_like(kept[0]))
        if grad_kl is not None:
            grad.addcmul_(kept[1], grad_kl.reshape(rows, 1))
        return grad.view(ctx.shape), None, None, None, None


def losses_and_gradients(logits, teacher, labels, vocab_size, temperature, keep_grad):
    """(ce [rows], kl [rows] or None, [d ce, d kl] in the logits' dtype, or [] without
    keep_grad) from logits and teacher [rows, padded vocabulary] and labels [rows] (-1: none),
    in chunks of rows with torch ops; kernels/logit_losses.py does the same on GPU in one
    kernel, this is its reference."""
    rows = logits.shape[0]
    targets = labels.reshape(rows, 1).clamp(min=0)
    ignored = labels < 0
    ce = torch.empty(rows, dtype=_compute_dtype(logits), device=logits.device)
    kl = torch.empty_like(ce) if teacher is not None else None
    kept = (1 + (kl is not None)) if keep_grad else 0
    grads = [_gradient_buffer(logits, vocab_size) for _ in range(kept)]
    step = max(1, CHUNK_ELEMENTS // vocab_size)
    for first in range(0, rows, step):
        part = slice(first, first + step)
        log_p = _log_softmax(logits[part, :vocab_size], 1.0)
        ce[part] = -log_p.gather(1, targets[part]).squeeze(1)
        if keep_grad:  # d ce / d logits = softmax − one-hot(target), rounded once
            d_ce = torch.exp(log_p, out=grads[0][part, :vocab_size])
            # p(target) − 1 exactly (an ignored row keeps p: its upstream gradient is zeroed)
            p_target = torch.where(ignored[part], torch.exp(-ce[part]), torch.expm1(-ce[part]))
            target_grad = p_target.unsqueeze(1)
            d_ce.scatter_(1, targets[part], target_grad.to(d_ce.dtype))
        if teacher is None:
            continue
        log_q_s = (
            log_p if temperature == 1 else _log_softmax(logits[part, :vocab_size], temperature)
        )
        del log_p
        log_q_t = _log_softmax(teacher[part, :vocab_size], temperature)
        q_t = log_q_t.exp()
        kl[part] = log_q_t.sub_(log_q_s).mul_(q_t).sum(-1)
        if keep_grad:  # d kl / d student = (softmax(s/T) − softmax(t/T)) / T
            difference = log_q_s.exp_().sub_(q_t)
            torch.div(difference, temperature, out=grads[1][part, :vocab_size])
    ce.masked_fill_(ignored, 0.0)
    return ce, kl, grads


def _triton_kernel(logits: torch.Tensor):
    """The one-kernel version where it can run: CUDA, 16- or 32-bit logits, Triton present."""
    if not logits.is_cuda or logits.dtype == torch.float64:
        return None
    try:
        from megatron_mamba.kernels.logit_losses import losses_and_gradients as kernel
    except ImportError:
        return None
    return kernel


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """In at least fp32; a 16-bit input is read as it is (the kernel converts as it loads)."""
    if temperature == 1:
        return torch.log_softmax(logits, -1, dtype=_compute_dtype(logits))
    return torch.log_softmax(logits.to(_compute_dtype(logits)) / temperature, -1)


def _gradient_buffer(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    buffer = torch.empty_like(logits)
    buffer[:, vocab_size:] = 0  # megatron's padded vocabulary gets no gradient
    return buffer


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per-token cross-entropy [b, s] of logits [b, s, vocab/TP] over the real vocabulary."""
    if ps.get_tensor_model_parallel_world_size() == 1:
        ce, _ = LocalLogitLosses.apply(logits, None, labels, vocab_size, 1.0)
        return ce
    return vocab_parallel_cross_entropy(without_padding(logits, vocab_size), labels)
