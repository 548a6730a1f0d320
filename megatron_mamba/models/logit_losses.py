"""Per-token cross-entropy and distillation KL over vocabulary-parallel logits.

These losses are memory-bound: the logits of 8192 tokens over Pythia's vocabulary are 1.6 GB in
fp32. megatron's vocab-parallel cross-entropy plus an autograd graph of torch ops make some thirty
passes over fp32 copies of them and keep two or three such copies for backward. Here the losses
and their gradients are computed together in forward and only the gradients are kept, in the
logits' own dtype: at TP=1 on GPU by one Triton kernel that reads each row twice
(kernels/logit_losses.py), otherwise by torch ops over chunks of rows (`losses_and_gradients`,
also the kernel's reference), whose per-row normalisers take two small all-reduces over the TP
group; the logits are never gathered. The losses are per token, so backward is exact: each row's
kept gradient times that token's upstream gradient.

Labels of -1 carry no loss. Columns at or beyond `vocab_size` (megatron's padding) are ignored.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_mamba import kernels

CHUNK_ELEMENTS = 2**25  # 128 MB of fp32 per temporary


class LogitLosses(torch.autograd.Function):
    """(ce, kl) per token [...] from this TP rank's logits [..., padded vocab / TP].

    kl = KL(softmax(teacher/T) ‖ softmax(student/T)) summed over the vocabulary; None without a
    teacher. Only `student` receives a gradient."""

    @staticmethod
    def forward(ctx, student, teacher, labels, vocab_size: int, temperature: float, group):
        rows, local = student.shape[:-1].numel(), student.shape[-1]
        logits = student.reshape(rows, local)
        taught = teacher.reshape(rows, local) if teacher is not None else None
        labels = labels.reshape(rows)
        args = (logits, taught, labels, vocab_size, temperature, ctx.needs_input_grad[0])
        kernel = kernels.fused_logit_losses(student) if _size(group) == 1 else None
        ce, kl, grads = kernel(*args) if kernel else losses_and_gradients(*args, group=group)
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
        return grad.view(ctx.shape), None, None, None, None, None


def losses_and_gradients(logits, teacher, labels, vocab_size, temperature, keep_grad, group=None):
    """(ce [rows], kl [rows] or None, [d ce, d kl] in the logits' dtype, or [] without
    keep_grad) from this TP rank's slice of the logits and teacher [rows, padded vocab / TP]
    and labels [rows], with torch ops over chunks of rows. Per chunk, two all-reduces of a few
    numbers per row over `group` (the maxima, then the sums) give every row its normalisers."""
    rows, local = logits.shape
    first = _rank(group) * local
    real = max(0, min(local, vocab_size - first))  # columns of the real vocabulary held here
    owned = (labels >= first) & (labels < first + real)  # the target's logit is here
    targets = (labels - first).clamp(0, max(real - 1, 0)).unsqueeze(1)
    dtype = _compute_dtype(logits)
    ce = torch.empty(rows, dtype=dtype, device=logits.device)
    kl = torch.empty_like(ce) if teacher is not None else None
    kept = (1 + (kl is not None)) if keep_grad else 0
    grads = [_gradient_buffer(logits, real) for _ in range(kept)]
    step = max(1, CHUNK_ELEMENTS // local)  # the same rows on every TP rank: they all-reduce
    for start in range(0, rows, step):
        part = slice(start, start + step)
        x = logits[part, :real].to(dtype)
        y = teacher[part, :real].to(dtype) if teacher is not None else None
        maxima = torch.stack([_row_max(v) for v in (x, y) if v is not None])
        _all_reduce(maxima, group, torch.distributed.ReduceOp.MAX)
        shifted = x - maxima[0, :, None]
        e = torch.exp(shifted)  # softmax(x) before normalising
        sums = [e.sum(-1), _gather(x, targets[part]).where(owned[part], 0.0)]
        if y is not None:  # a = x/T and b = y/T have the logits' maxima over T
            e_a = torch.exp(shifted.div_(temperature))
            e_b = torch.exp((y - maxima[1, :, None]) / temperature)
            sums += [e_a.sum(-1), e_b.sum(-1), (e_b * (y - x)).sum(-1) / temperature]
        sums = torch.stack(sums)
        _all_reduce(sums, group, torch.distributed.ReduceOp.SUM)
        ce[part] = maxima[0] + sums[0].log() - sums[1]
        if y is not None:  # Σ q_b (b − lse_b − a + lse_a) = Σ e_b (b − a) / Σ e_b − lse_b + lse_a
            lse_a = maxima[0] / temperature + sums[2].log()
            lse_b = maxima[1] / temperature + sums[3].log()
            kl[part] = sums[4] / sums[3] - lse_b + lse_a
        if not keep_grad:
            continue
        # d ce / d logits = softmax − one-hot(target), rounded once; the target's entry as
        # expm1(−ce) = p(target) − 1 exactly (an ignored row keeps p: backward zeroes its row)
        d_ce = torch.div(e, sums[0, :, None], out=grads[0][part, :real])
        at_target = _gather(d_ce, targets[part])
        p_target = torch.expm1(-ce[part]).to(d_ce.dtype).where(owned[part], at_target)
        if real:
            d_ce.scatter_(1, targets[part], p_target.unsqueeze(1))
        if y is not None:  # d kl / d student = (softmax(a) − softmax(b)) / T
            q = e_a.div_(sums[2, :, None]).sub_(e_b.div_(sums[3, :, None]))
            torch.div(q, temperature, out=grads[1][part, :real])
    ce.masked_fill_(labels < 0, 0.0)
    return ce, kl, grads


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per-token cross-entropy [b, s] of vocab-parallel logits [b, s, vocab/TP]."""
    group = ps.get_tensor_model_parallel_group()
    ce, _ = LogitLosses.apply(logits, None, labels, vocab_size, 1.0, group)
    return ce


def _size(group) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


def _rank(group) -> int:
    return 0 if group is None else torch.distributed.get_rank(group)


def _all_reduce(t: torch.Tensor, group, op) -> None:
    if _size(group) > 1:
        torch.distributed.all_reduce(t, op=op, group=group)


def _row_max(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 0:  # a TP rank holding only padding
        return torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)
    return x.amax(-1)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 0:
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    return x.gather(1, index).squeeze(1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _gradient_buffer(logits: torch.Tensor, real: int) -> torch.Tensor:
    buffer = torch.empty_like(logits)
    buffer[:, real:] = 0  # megatron's padded vocabulary gets no gradient
    return buffer
