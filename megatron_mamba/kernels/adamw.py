"""Adam / AdamW over every tensor of a parameter group in one Triton launch.

torch's fused AdamW walks the tensors in chunks of 65,536 elements, a few hundred chunks per
launch; on a 1.2B bf16 model its update took 6.2 ms, one pass over 14 bytes per parameter at
2.2 TB/s, under half of an H200's bandwidth; this kernel took 3.6 ms (3.8 TB/s;
benchmarks/RESULTS.md, optimizer section, where BLOCK and WARPS were chosen by
benchmarks/adamw_blocks.py). One launch covers the group: each program updates BLOCK
elements of one tensor, found through a table of (tensor, offset) per block, the tensors
themselves through their distances from each list's first (kernels/tensor_blocks.py).

The arithmetic is torch's fused kernel's (aten/src/ATen/native/cuda/fused_adam_utils.cuh), in
fp32 whatever the storage dtype: decoupled decay `p -= lr·wd·p` (AdamW) or `g += wd·p` (Adam),
the moments, then `p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)` with the bias corrections of each
tensor's own step count, read on the device (no host sync). The caller increments the steps.
The gradient may be scaled on the way in (clipping's coefficient, left to this pass), and the
updated parameter also written, rounded, to a copy of another dtype (fp32 master weights' bf16
model weights: the pass megatron's optimizer would make after the update).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_mamba.kernels.tensor_blocks import TensorBlocks

BLOCK, WARPS = 2048, 4

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _at(anchor, offset_row, t, local, ALIGNED: tl.constexpr):
    """Pointers to elements `local` of tensor t of a list: its offset from the list's anchor
    (the pointer argument), declared a multiple of 16 bytes where `TensorBlocks.aligned`."""
    offsets = tl.load(offset_row + t) + local
    if ALIGNED:
        VECTOR: tl.constexpr = 128 // anchor.dtype.element_ty.primitive_bitwidth
        offsets = tl.max_contiguous(tl.multiple_of(offsets, VECTOR), VECTOR)
    return anchor + offsets


@triton.jit
def _adam_blocks(
    param,  # each list's first tensor (the anchors)
    grad,
    exp_avg,
    exp_avg_sq,
    copy,  # the copies' anchor where COPY, else unused
    step,
    offsets,  # int64 [5 or 6, tensors]: each tensor's distance in elements from its list's anchor
    numels,  # int64 [tensors]
    block_tensor,  # int32 [blocks]: the tensor each program updates
    block_start,  # int64 [blocks]: the program's first element in it
    tensors,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    grad_scale,
    DECOUPLED: tl.constexpr,
    COPY: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    local = tl.multiple_of(tl.load(block_start + pid), BLOCK) + tl.arange(0, BLOCK)
    numel = tl.load(numels + t)
    if ALIGNED:  # the mask is then the same over each 8 elements, a vector's worth
        numel = tl.multiple_of(numel, 8)
    inside = local < numel
    param = _at(param, offsets, t, local, ALIGNED)
    grad = _at(grad, offsets + tensors, t, local, ALIGNED)
    exp_avg = _at(exp_avg, offsets + 2 * tensors, t, local, ALIGNED)
    exp_avg_sq = _at(exp_avg_sq, offsets + 3 * tensors, t, local, ALIGNED)
    STEP_ROW: tl.constexpr = 5 if COPY else 4  # the step counts' row follows the blocked lists
    step = tl.load(step + tl.load(offsets + STEP_ROW * tensors + t))

    p = tl.load(param, mask=inside).to(tl.float32)
    g = tl.load(grad, mask=inside).to(tl.float32) * grad_scale
    m = tl.load(exp_avg, mask=inside).to(tl.float32)
    v = tl.load(exp_avg_sq, mask=inside).to(tl.float32)
    if DECOUPLED:
        p = p - lr * weight_decay * p
    else:
        g = g + p * weight_decay
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    bias_correction1 = 1 - tl.exp2(step * tl.log2(beta1))
    bias_correction2 = 1 - tl.exp2(step * tl.log2(beta2))
    denominator = tl.sqrt(v) / tl.sqrt(bias_correction2) + eps
    p = p - (lr / bias_correction1) * m / denominator
    # rounded to nearest even where the storage is narrower
    tl.store(param, p.to(param.dtype.element_ty), mask=inside)
    tl.store(exp_avg, m.to(exp_avg.dtype.element_ty), mask=inside)
    tl.store(exp_avg_sq, v.to(exp_avg_sq.dtype.element_ty), mask=inside)
    if COPY:
        copy = _at(copy, offsets + 4 * tensors, t, local, ALIGNED)
        tl.store(copy, p.to(copy.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)


def _fits(tensors: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Contiguous CUDA tensors of one dtype among float32/bf16/fp16, one in each parameter's
    shape."""
    if len(tensors) != len(params):
        return False
    dtype = tensors[0].dtype
    return dtype in DTYPES and all(
        t.dtype == dtype and t.is_cuda and t.is_contiguous() and t.shape == p.shape
        for t, p in zip(tensors, params, strict=True)
    )


def supports(params, grads, exp_avgs, exp_avg_sqs, steps) -> bool:
    """Whether `adam_step` takes these lists: contiguous CUDA tensors of one dtype per list among
    float32/bf16/fp16, moments in the parameters' shapes, float32 step counts."""
    if not params or len(steps) != len(params):
        return False
    lists_ok = all(_fits(tensors, params) for tensors in (params, grads, exp_avgs, exp_avg_sqs))
    steps_ok = all(s.is_cuda and s.dtype == torch.float32 and s.numel() == 1 for s in steps)
    return lists_ok and steps_ok


def takes_copies(params: list[torch.Tensor], copies: list[torch.Tensor]) -> bool:
    """Whether `adam_step` may write these copies of `params` (which `supports` takes)."""
    return _fits(copies, params)


def block_tables(
    lists: tuple[list[torch.Tensor], ...],
    tables: TensorBlocks,
    copies: list[torch.Tensor] | None = None,
    block: int = BLOCK,
) -> None:
    """Bring `adam_step`'s tables up to date for its `lists` (params, grads, exp_avgs,
    exp_avg_sqs, steps) and `copies` (where no address moved, a check of each); separate so
    that a caller may do it ahead of the step."""
    *blocked, steps = lists
    tables.update((*blocked, *([copies] if copies is not None else [])), block, scalars=(steps,))


def adam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    tables: TensorBlocks,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    grad_scale: float = 1.0,
    copies: list[torch.Tensor] | None = None,
    block: int = BLOCK,
    warps: int = WARPS,
    tables_ready: bool = False,
) -> None:
    """One Adam(W) update of every tensor in place (`supports` must hold); `steps` already
    counts this step. The gradients are taken times `grad_scale` (clipping's coefficient).
    `copies`: where given, each updated parameter is also written there, rounded to the copy's
    dtype. `block` elements per program and `warps` per program: the defaults unless measuring
    others (benchmarks/adamw_blocks.py). `tables_ready`: `block_tables` has been called on
    these lists since they last changed (skips its check of every address)."""
    if not tables_ready:
        block_tables((params, grads, exp_avgs, exp_avg_sqs, steps), tables, copies, block)
    _adam_blocks[(tables.block_tensor.numel(),)](
        params[0],
        grads[0],
        exp_avgs[0],
        exp_avg_sqs[0],
        params[0] if copies is None else copies[0],
        steps[0],
        tables.offsets,
        tables.numels,
        tables.block_tensor,
        tables.block_start,
        len(params),
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        float(grad_scale),
        DECOUPLED=decoupled,
        COPY=copies is not None,
        ALIGNED=tables.aligned,
        BLOCK=block,
        num_warps=warps,
    )
