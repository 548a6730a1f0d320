"""Per-token cross-entropy and distillation KL with their gradients, one Triton program per row.

Each row of logits (and the teacher's) is read twice from memory in its own dtype: once to find
the normalisers online (running maximum and sum, as flash attention does) together with the KL's
Σ q_t·(t − s) term, once more to write the gradients. Nothing in fp32 the size of the logits is
ever made. The torch version in models/logit_losses.py is the reference (and runs off GPU).

KL(q_t ‖ q_s) with a = s/T, b = t/T: Σ q_t (b − lse_b − a + lse_a) = Σ e^(b − m_b)(b − a) / d_b
− lse_b + lse_a, where m_b and d_b are b's running maximum and normaliser.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _online(m, d, x):
    m_new = tl.maximum(m, tl.max(x, 0))
    return m_new, d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)


@triton.jit
def _losses_kernel(
    s_ptr,
    t_ptr,
    labels_ptr,
    ce_ptr,
    kl_ptr,
    g_ce_ptr,
    g_kl_ptr,
    s_stride,
    t_stride,
    g_stride,
    vocab,
    padded,
    inv_temperature,
    HAS_TEACHER: tl.constexpr,
    KEEP_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    label = tl.load(labels_ptr + row)
    # running maxima start below any logit, finite so that exp(m_old − m_new) is 0, not nan
    m_s = -1.0e30
    d_s = 0.0
    m_a = -1.0e30
    d_a = 0.0
    m_b = -1.0e30
    d_b = 0.0
    cross = 0.0  # Σ e^(b − m_b)(b − a)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        real = cols < vocab
        x = tl.load(s_row + cols, mask=real, other=float("-inf")).to(tl.float32)
        m_s, d_s = _online(m_s, d_s, x)
        if HAS_TEACHER:
            a = x * inv_temperature
            b = tl.load(t_row + cols, mask=real, other=float("-inf")).to(tl.float32)
            b = b * inv_temperature
            m_a, d_a = _online(m_a, d_a, a)
            m_new = tl.maximum(m_b, tl.max(b, 0))
            rescale = tl.exp(m_b - m_new)
            e_b = tl.exp(b - m_new)
            d_b = d_b * rescale + tl.sum(e_b, 0)
            cross = cross * rescale + tl.sum(tl.where(real, e_b * (b - a), 0.0), 0)
            m_b = m_new
    lse_s = m_s + tl.log(d_s)
    has_label = label >= 0
    target = tl.load(s_row + tl.where(has_label, label, 0)).to(tl.float32)
    tl.store(ce_ptr + row, tl.where(has_label, lse_s - target, 0.0))
    lse_a = m_a + tl.log(d_a)
    lse_b = m_b + tl.log(d_b)
    if HAS_TEACHER:
        tl.store(kl_ptr + row, cross / d_b - lse_b + lse_a)
    if KEEP_GRAD:
        g_ce_row = g_ce_ptr + row * g_stride
        g_kl_row = g_kl_ptr + row * g_stride
        for start in range(0, padded, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            real = cols < vocab
            inside = cols < padded
            x = tl.load(s_row + cols, mask=real, other=float("-inf")).to(tl.float32)
            g = tl.exp(x - lse_s) - tl.where(cols == label, 1.0, 0.0)
            tl.store(g_ce_row + cols, g.to(g_ce_ptr.dtype.element_ty), mask=inside)
            if HAS_TEACHER:
                b = tl.load(t_row + cols, mask=real, other=float("-inf")).to(tl.float32)
                q_s = tl.exp(x * inv_temperature - lse_a)
                q_t = tl.exp(b * inv_temperature - lse_b)
                g = (q_s - q_t) * inv_temperature
                tl.store(g_kl_row + cols, g.to(g_kl_ptr.dtype.element_ty), mask=inside)


def losses_and_gradients(
    logits: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    vocab_size: int,
    temperature: float,
    keep_grad: bool,
):
    """(ce [rows] fp32, kl [rows] fp32 or None, [d ce, d kl] in the logits' dtype, or [] without
    keep_grad) from logits and teacher [rows, padded vocabulary] and labels [rows] (-1: none)."""
    rows, padded = logits.shape
    logits, labels = _rows_contiguous(logits), labels.contiguous()
    teacher = _rows_contiguous(teacher) if teacher is not None else None
    ce = torch.empty(rows, dtype=torch.float32, device=logits.device)
    kl = torch.empty_like(ce) if teacher is not None else None
    grads = (
        [torch.empty_like(logits) for _ in range(1 + (teacher is not None))] if keep_grad else []
    )
    _losses_kernel[(rows,)](
        logits,
        teacher if teacher is not None else logits,
        labels,
        ce,
        kl if kl is not None else ce,
        grads[0] if grads else logits,
        grads[-1] if grads else logits,
        logits.stride(0),
        teacher.stride(0) if teacher is not None else 0,
        grads[0].stride(0) if grads else 0,
        vocab_size,
        padded,
        1.0 / temperature,
        HAS_TEACHER=teacher is not None,
        KEEP_GRAD=keep_grad,
        BLOCK=4096,
        num_warps=16,
    )
    return ce, kl, grads


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()
