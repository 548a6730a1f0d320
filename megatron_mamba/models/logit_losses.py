"""Per-token cross-entropy and distillation KL over vocabulary-parallel logits.

These losses are memory-bound: the logits of 8192 tokens over Pythia's vocabulary are 1.6 GB in
fp32. megatron's vocab-parallel cross-entropy plus an autograd graph of torch ops make some thirty
passes over fp32 copies of them and keep two or three such copies for backward. Here the losses
and their gradients are computed together in forward and only the gradients are kept, in the
logits' own dtype: on GPU by Triton kernels that read each row twice (kernels/logit_losses.py),
elsewhere by torch ops over chunks of rows (`losses_and_gradients`, also the kernels'
reference). Either way each TP rank finds a few statistics per row over its own columns, they
are all-gathered and pooled into the row's normalisers (`combine_row_statistics`), and each rank
writes the gradient of its columns: the logits are never gathered. The losses are per token, so
backward is exact: each row's kept gradient times that token's upstream gradient.

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
        kernel = kernels.triton_logit_losses(student)
        if kernel is None:
            ce, kl, grads = losses_and_gradients(*args, group=group)
        else:
            ce, kl, grads = kernel_losses_and_gradients(kernel, *args, group=group)
        ctx.save_for_backward(labels < 0, *grads)
        ctx.shape = student.shape
        shape = student.shape[:-1]
        return ce.view(shape), kl.view(shape) if kl is not None else None

    @staticmethod
    def backward(ctx, grad_ce, grad_kl):
        ignored, *kept = ctx.saved_tensors
        terms = []  # (kept gradient, each row's upstream gradient [rows, 1])
        if grad_ce is not None:  # an ignored label's row carries no CE gradient
            terms.append((kept[0], grad_ce.reshape(-1, 1).masked_fill(ignored[:, None], 0.0)))
        if grad_kl is not None:
            terms.append((kept[1], grad_kl.reshape(-1, 1)))
        return scaled_sum(terms).view(ctx.shape), None, None, None, None, None


def scaled_sum(terms) -> torch.Tensor:
    """Σ gradient · upstream over (gradient [rows, columns], upstream [rows, 1]) terms, in the
    gradients' dtype: by one Triton pass on GPU (kernels/logit_losses.scaled_rows)."""
    kernel = kernels.triton_logit_losses(terms[0][0])
    if kernel is not None:
        return kernel.scaled_rows(*(x for term in terms for x in term))
    grad = torch.mul(*terms[0], out=torch.empty_like(terms[0][0]))
    for kept, upstream in terms[1:]:
        grad.addcmul_(kept, upstream)
    return grad


def losses_and_gradients(logits, teacher, labels, vocab_size, temperature, keep_grad, group=None):
    """(ce [rows], kl [rows] or None, [d ce, d kl] in the logits' dtype, or [] without
    keep_grad) from this TP rank's slice of the logits and teacher [rows, padded vocab / TP]
    and labels [rows], with torch ops over chunks of rows. Per chunk, each rank's row
    statistics are all-gathered over `group` and pooled into every row's normalisers."""
    rows, local = logits.shape
    first, real = _columns(local, vocab_size, group)
    owned = (labels >= first) & (labels < first + real)  # the target's logit is here
    targets = (labels - first).clamp(0, max(real - 1, 0)).unsqueeze(1)
    dtype = _compute_dtype(logits)
    ce = torch.empty(rows, dtype=dtype, device=logits.device)
    kl = torch.empty_like(ce) if teacher is not None else None
    kept = (1 + (kl is not None)) if keep_grad else 0
    grads = [_gradient_buffer(logits, real) for _ in range(kept)]
    step = max(1, CHUNK_ELEMENTS // local)  # the same rows on every TP rank: they all-gather
    for start in range(0, rows, step):
        part = slice(start, start + step)
        x = logits[part, :real].to(dtype)
        y = teacher[part, :real].to(dtype) if teacher is not None else None
        # e = exp(x − m), e_a = exp((x − m)/T), e_b = exp((y − m_y)/T): softmaxes unnormalised
        m = _row_max(x)
        e = torch.exp(x - m[:, None])
        stats = [m, e.sum(-1), _gather(x, targets[part]).where(owned[part], 0.0)]
        if y is not None:  # a = x/T and b = y/T have the logits' maxima over T
            m_y = _row_max(y)
            e_a = torch.exp((x - m[:, None]).div_(temperature))
            e_b = torch.exp((y - m_y[:, None]).div_(temperature))
            cross = (e_b * (y - x)).sum(-1) / temperature
            stats += [m / temperature, e_a.sum(-1), m_y / temperature, e_b.sum(-1), cross]
        stats = torch.stack(stats)
        ce[part], kl_part, lse = combine_row_statistics(_by_rank(stats, group))
        if kl_part is not None:
            kl[part] = kl_part
        if not keep_grad:
            continue
        # d ce / d logits = softmax − one-hot(target), rounded once; the target's entry as
        # expm1(−ce) = p(target) − 1 exactly (an ignored row keeps p: backward zeroes its row)
        d_ce = torch.mul(e, torch.exp(m - lse[0])[:, None], out=grads[0][part, :real])
        at_target = _gather(d_ce, targets[part])
        p_target = torch.expm1(-ce[part]).to(d_ce.dtype).where(owned[part], at_target)
        if real:
            d_ce.scatter_(1, targets[part], p_target.unsqueeze(1))
        if y is not None:  # d kl / d student = (softmax(a) − softmax(b)) / T
            q = e_a.mul_(torch.exp(stats[3] - lse[1])[:, None])
            q.sub_(e_b.mul_(torch.exp(stats[5] - lse[2])[:, None]))
            torch.div(q, temperature, out=grads[1][part, :real])
    ce.masked_fill_(labels < 0, 0.0)
    return ce, kl, grads


def combine_row_statistics(stats: torch.Tensor):
    """(ce before masking ignored labels, kl or None, lse [1 or 3, rows]) from every TP rank's
    row statistics [ranks, 3 or 8, rows]: (m, d, target logit) of the logits, and with a
    teacher (m, d) of a = logits/T and of b = teacher/T and Σ e^(b − m_b)(b − a), each over
    that rank's columns with d = Σ exp(v − m). lse holds log Σ exp of the logits, a and b."""

    def pooled(m, d):  # log Σ_ranks d·e^m, and each rank's rescale e^(m − max)
        top = m.amax(0)
        rescale = torch.exp(m - top)
        total = (d * rescale).sum(0)
        return top + total.log(), rescale, total

    lse_s, _, _ = pooled(stats[:, 0], stats[:, 1])
    ce = lse_s - stats[:, 2].sum(0)
    if stats.shape[1] == 3:
        return ce, None, lse_s[None]
    lse_a, _, _ = pooled(stats[:, 3], stats[:, 4])
    lse_b, rescale_b, d_b = pooled(stats[:, 5], stats[:, 6])
    kl = (stats[:, 7] * rescale_b).sum(0) / d_b - lse_b + lse_a
    return ce, kl, torch.stack([lse_s, lse_a, lse_b])


def kernel_losses_and_gradients(
    kernel, logits, teacher, labels, vocab_size, temperature, keep_grad, group=None
):
    """`losses_and_gradients` by the Triton kernels (kernels/logit_losses.py): row statistics,
    one small all-gather of them over `group`, then this rank's gradients."""
    first, real = _columns(logits.shape[1], vocab_size, group)
    stats = kernel.row_statistics(logits, teacher, labels, first, real, temperature)
    ce, kl, lse = combine_row_statistics(_by_rank(stats, group))
    ce.masked_fill_(labels < 0, 0.0)
    grads = []
    if keep_grad:
        grads = kernel.gradients(logits, teacher, labels, first, real, lse, temperature)
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


def _columns(local: int, vocab_size: int, group) -> tuple[int, int]:
    """(the vocabulary index of this rank's first column, how many of its columns are real)."""
    first = _rank(group) * local
    return first, max(0, min(local, vocab_size - first))


def _by_rank(stats: torch.Tensor, group) -> torch.Tensor:
    """[ranks, ...]: every TP rank's `stats`, in rank order."""
    if _size(group) == 1:
        return stats[None]
    gathered = [torch.empty_like(stats) for _ in range(_size(group))]
    torch.distributed.all_gather(gathered, stats.contiguous(), group=group)
    return torch.stack(gathered)


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
