"""Per-token cross-entropy and distillation KL with their gradients, one Triton program per row.

Each row of logits (and the teacher's) is read twice from memory in its own dtype: once to find
the normalisers online (running maximum and sum, as flash attention does) together with the KL's
Σ q_t·(t − s) term, once more to write the gradients. Nothing in fp32 the size of the logits is
ever made. The torch version in models/logit_losses.py is the reference (and runs off GPU).

The two passes are two kernels, so that the vocabulary may be split over TP ranks:
`row_statistics` gives each row's normalisers over this rank's columns, the caller pools them
over the ranks (models/logit_losses.combine_row_statistics: a few numbers per row), and
`gradients` writes this rank's columns. (With the whole vocabulary on one rank, both passes in
one program measured no faster: benchmarks/RESULTS.md.)

KL(q_t ‖ q_s) with a = s/T, b = t/T: Σ q_t (b − lse_b − a + lse_a) = Σ e^(b − m_b)(b − a) / d_b
− lse_b + lse_a, where m_b and d_b are b's running maximum and normaliser.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

COLUMNS_PER_BLOCK, WARPS = 4096, 16
SCALE_BLOCK = 2048
STATISTICS = 8  # per row: m_s, d_s, target logit, m_a, d_a, m_b, d_b, cross


@triton.jit
def _online(m, d, x):
    m_new = tl.maximum(m, tl.max(x, 0))
    return m_new, d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)


@triton.jit
def _statistics(
    s_row, t_row, target, real, inv_temperature, HAS_TEACHER: tl.constexpr, BLOCK: tl.constexpr
):
    """Over columns [0, real): maxima and normalisers of s, a = s/T and b = t/T, the cross term
    Σ e^(b − m_b)(b − a), and s at column `target` (0 where target is not in [0, real))."""
    # running maxima start below any logit, finite so that exp(m_old − m_new) is 0, not nan
    m_s = -1.0e30
    d_s = 0.0
    m_a = -1.0e30
    d_a = 0.0
    m_b = -1.0e30
    d_b = 0.0
    cross = 0.0
    for start in range(0, real, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < real
        x = tl.load(s_row + cols, mask=inside, other=float("-inf")).to(tl.float32)
        m_s, d_s = _online(m_s, d_s, x)
        if HAS_TEACHER:
            a = x * inv_temperature
            b = tl.load(t_row + cols, mask=inside, other=float("-inf")).to(tl.float32)
            b = b * inv_temperature
            m_a, d_a = _online(m_a, d_a, a)
            m_new = tl.maximum(m_b, tl.max(b, 0))
            rescale = tl.exp(m_b - m_new)
            e_b = tl.exp(b - m_new)
            d_b = d_b * rescale + tl.sum(e_b, 0)
            cross = cross * rescale + tl.sum(tl.where(inside, e_b * (b - a), 0.0), 0)
            m_b = m_new
    owned = (target >= 0) & (target < real)
    s_target = tl.load(s_row + tl.where(owned, target, 0), mask=owned, other=0.0).to(tl.float32)
    return m_s, d_s, s_target, m_a, d_a, m_b, d_b, cross


@triton.jit
def _write_gradients(
    s_row,
    t_row,
    g_ce_row,
    g_kl_row,
    target,
    real,
    columns,
    lse_s,
    lse_a,
    lse_b,
    inv_temperature,
    HAS_TEACHER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """d ce = softmax(s) − one-hot(target) and d kl = (softmax(a) − softmax(b)) / T over columns
    [0, columns); zero at and beyond `real` (megatron's vocabulary padding)."""
    for start in range(0, columns, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        live = cols < real
        inside = cols < columns
        x = tl.load(s_row + cols, mask=live, other=float("-inf")).to(tl.float32)
        g = tl.exp(x - lse_s) - tl.where(cols == target, 1.0, 0.0)
        tl.store(g_ce_row + cols, g.to(g_ce_row.dtype.element_ty), mask=inside)
        if HAS_TEACHER:
            b = tl.load(t_row + cols, mask=live, other=float("-inf")).to(tl.float32)
            q_s = tl.exp(x * inv_temperature - lse_a)
            q_t = tl.exp(b * inv_temperature - lse_b)
            g = (q_s - q_t) * inv_temperature
            tl.store(g_kl_row + cols, g.to(g_kl_row.dtype.element_ty), mask=inside)


@triton.jit
def _statistics_kernel(
    s_ptr,
    t_ptr,
    labels_ptr,
    stats_ptr,
    s_stride,
    t_stride,
    rows,
    first,
    real,
    inv_temperature,
    HAS_TEACHER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(labels_ptr + row) - first
    m_s, d_s, s_target, m_a, d_a, m_b, d_b, cross = _statistics(
        s_ptr + row * s_stride,
        t_ptr + row * t_stride,
        target,
        real,
        inv_temperature,
        HAS_TEACHER,
        BLOCK,
    )
    out = stats_ptr + row
    tl.store(out, m_s)
    tl.store(out + rows, d_s)
    tl.store(out + 2 * rows, s_target)
    if HAS_TEACHER:
        tl.store(out + 3 * rows, m_a)
        tl.store(out + 4 * rows, d_a)
        tl.store(out + 5 * rows, m_b)
        tl.store(out + 6 * rows, d_b)
        tl.store(out + 7 * rows, cross)


@triton.jit
def _gradients_kernel(
    s_ptr,
    t_ptr,
    labels_ptr,
    lse_ptr,
    g_ce_ptr,
    g_kl_ptr,
    s_stride,
    t_stride,
    g_stride,
    rows,
    first,
    real,
    columns,
    inv_temperature,
    HAS_TEACHER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    lse_s = tl.load(lse_ptr + row)
    lse_a = lse_s
    lse_b = lse_s
    if HAS_TEACHER:
        lse_a = tl.load(lse_ptr + rows + row)
        lse_b = tl.load(lse_ptr + 2 * rows + row)
    _write_gradients(
        s_ptr + row * s_stride,
        t_ptr + row * t_stride,
        g_ce_ptr + row * g_stride,
        g_kl_ptr + row * g_stride,
        tl.load(labels_ptr + row) - first,
        real,
        columns,
        lse_s,
        lse_a,
        lse_b,
        inv_temperature,
        HAS_TEACHER,
        BLOCK,
    )


def row_statistics(logits, teacher, labels, first: int, real: int, temperature: float):
    """[3 or 8, rows] fp32 over this rank's columns [0, real) of logits and teacher [rows, local],
    whose column 0 is the vocabulary's `first`: the maximum and normaliser of the logits, the
    label's logit where this rank holds it (else 0), and with a teacher the maxima and
    normalisers of logits/T and teacher/T and Σ e^(b − m_b)(b − a)."""
    rows = logits.shape[0]
    logits, teacher, labels = _contiguous(logits, teacher, labels)
    stats = torch.empty(STATISTICS if teacher is not None else 3, rows, device=logits.device)
    _statistics_kernel[(rows,)](
        logits,
        teacher if teacher is not None else logits,
        labels,
        stats,
        logits.stride(0),
        teacher.stride(0) if teacher is not None else 0,
        rows,
        first,
        real,
        1.0 / temperature,
        HAS_TEACHER=teacher is not None,
        BLOCK=COLUMNS_PER_BLOCK,
        num_warps=WARPS,
    )
    return stats


def gradients(logits, teacher, labels, first: int, real: int, lse, temperature: float):
    """[d ce, d kl] over this rank's columns in the logits' dtype, given each row's pooled
    log-normalisers lse [1 or 3, rows] (of logits, logits/T, teacher/T); zero beyond `real`."""
    rows, columns = logits.shape
    logits, teacher, labels = _contiguous(logits, teacher, labels)
    grads = _gradient_buffers(logits, teacher)
    _gradients_kernel[(rows,)](
        logits,
        teacher if teacher is not None else logits,
        labels,
        lse.float().contiguous(),
        grads[0],
        grads[-1],
        logits.stride(0),
        teacher.stride(0) if teacher is not None else 0,
        grads[0].stride(0),
        rows,
        first,
        real,
        columns,
        1.0 / temperature,
        HAS_TEACHER=teacher is not None,
        BLOCK=COLUMNS_PER_BLOCK,
        num_warps=WARPS,
    )
    return grads


@triton.jit
def _scaled_rows_kernel(
    a_ptr,
    a_scale_ptr,
    b_ptr,
    b_scale_ptr,
    out_ptr,
    stride,
    columns,
    HAS_B: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < columns
    at = row * stride + cols
    out = tl.load(a_ptr + at, mask=inside).to(tl.float32) * tl.load(a_scale_ptr + row)
    if HAS_B:
        out += tl.load(b_ptr + at, mask=inside).to(tl.float32) * tl.load(b_scale_ptr + row)
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=inside)


def scaled_rows(a, a_scale, b=None, b_scale=None):
    """a · a_scale (+ b · b_scale) for gradients [rows, columns] and per-row scales [rows], in
    fp32, rounded once to a's dtype: backward's kept gradients times each token's upstream
    gradient in one pass (torch's broadcast product and addcmul took ~1.8 ms and two passes on
    8192 rows of Pythia's vocabulary)."""
    rows, columns = a.shape
    out = torch.empty_like(a)
    scales = [x.reshape(rows).float().contiguous() for x in (a_scale, b_scale) if x is not None]
    _scaled_rows_kernel[(rows, triton.cdiv(columns, SCALE_BLOCK))](
        a,
        scales[0],
        b if b is not None else a,
        scales[-1],
        out,
        a.stride(0),
        columns,
        HAS_B=b is not None,
        BLOCK=SCALE_BLOCK,
        num_warps=4,
    )
    return out


def _contiguous(logits, teacher, labels):
    rows = [x if x is None or x.stride(-1) == 1 else x.contiguous() for x in (logits, teacher)]
    return rows[0], rows[1], labels.contiguous()


def _gradient_buffers(logits, teacher) -> list[torch.Tensor]:
    return [torch.empty_like(logits) for _ in range(1 + (teacher is not None))]
