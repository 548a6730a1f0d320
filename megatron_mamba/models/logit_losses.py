"""Per-token cross-entropy (and distillation KL) over logits whose vocabulary is on one rank.

These losses are memory-bound: the logits of 8192 tokens over Pythia's vocabulary are 1.6 GB in
fp32. megatron's vocab-parallel cross-entropy plus an autograd graph of torch ops make some thirty
passes over fp32 copies of them and keep two or three such copies for backward. Here each chunk of
rows is cast to fp32 once, the losses and their gradients are computed while it is at hand, and
only the gradients are kept, in the logits' own dtype. The losses are per token, so backward is
exact: each row's kept gradient times that token's upstream gradient.

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
        targets = labels.reshape(rows, 1)
        taught = teacher.reshape(rows, padded) if teacher is not None else None
        keep_grad = ctx.needs_input_grad[0]
        ce = torch.empty(rows, dtype=_compute_dtype(student), device=student.device)
        kl = torch.empty_like(ce) if taught is not None else None
        kept = (1 + (kl is not None)) if keep_grad else 0
        grads = [_gradient_buffer(logits, vocab_size) for _ in range(kept)]
        ignored = targets < 0
        safe_targets = targets.clamp(min=0)
        step = max(1, CHUNK_ELEMENTS // vocab_size)
        for first in range(0, rows, step):
            part = slice(first, first + step)
            s = _fp32_copy(logits[part, :vocab_size])
            log_p = torch.log_softmax(s, -1)
            ce[part] = (
                -log_p.gather(1, safe_targets[part])
                .squeeze(1)
                .masked_fill(ignored[part].squeeze(1), 0.0)
            )
            if keep_grad:  # d ce / d logits = softmax − one-hot(target)
                d_ce = log_p.exp_().scatter_add_(
                    1, safe_targets[part], _minus_one(part, ignored, log_p.dtype)
                )
                grads[0][part, :vocab_size] = d_ce.masked_fill_(ignored[part], 0.0)
            del log_p
            if taught is None:
                continue
            log_q_s = torch.log_softmax(s.div_(temperature), -1)
            t = _fp32_copy(taught[part, :vocab_size]).div_(temperature)
            log_q_t = torch.log_softmax(t, -1)
            q_t = log_q_t.exp()
            kl[part] = (log_q_t - log_q_s).mul_(q_t).sum(-1)
            if keep_grad:  # d kl / d student = (softmax(s/T) − softmax(t/T)) / T
                grads[1][part, :vocab_size] = log_q_s.exp_().sub_(q_t).div_(temperature)
        ctx.save_for_backward(*grads)
        ctx.shape = student.shape
        shape = student.shape[:-1]
        return ce.view(shape), kl.view(shape) if kl is not None else None

    @staticmethod
    def backward(ctx, grad_ce, grad_kl):
        kept = ctx.saved_tensors
        rows = kept[0].shape[0]
        upstream = [g.reshape(rows, 1) if g is not None else None for g in (grad_ce, grad_kl)]
        grad = torch.empty_like(kept[0])
        step = max(1, CHUNK_ELEMENTS // grad.shape[-1])
        for first in range(0, rows, step):
            part = slice(first, first + step)
            total = torch.zeros(grad[part].shape, dtype=_compute_dtype(grad), device=grad.device)
            for d, g in zip(kept, upstream, strict=False):
                if g is not None:
                    total.addcmul_(d[part].to(total.dtype), g[part].to(total.dtype))
            grad[part] = total
        return grad.view(ctx.shape), None, None, None, None


def _gradient_buffer(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    buffer = torch.empty_like(logits)
    buffer[:, vocab_size:] = 0  # megatron's padded vocabulary gets no gradient
    return buffer


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _fp32_copy(x: torch.Tensor) -> torch.Tensor:
    return x.to(_compute_dtype(x), copy=True)


def _minus_one(part: slice, ignored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(ignored[part].shape, -1.0, dtype=dtype, device=ignored.device)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per-token cross-entropy [b, s] of logits [b, s, vocab/TP] over the real vocabulary."""
    if ps.get_tensor_model_parallel_world_size() == 1:
        ce, _ = LocalLogitLosses.apply(logits, None, labels, vocab_size, 1.0)
        return ce
    return vocab_parallel_cross_entropy(without_padding(logits, vocab_size), labels)
