"""Rotary position embedding (NeoX's rotate-half form, partial rotary too) as one Triton kernel
each way, for queries and keys laid out [s, b, heads, head_dim].

megatron-core's unfused RoPE (without Transformer Engine) runs some eight kernels per tensor:
cos and sin of the angles and their casts, the products, the rotate-half's negation and cat, the
sum, and the cat with the dimensions left unrotated; the same again in backward. Here one program
per (position, batch row) reads all heads once, computes cos and sin of the angles in fp32, and
writes the result; backward applies the transposed rotation to the gradient. With c and s the
cosines and sines of the rotated half-pairs (j < r/2, partner j + r/2):
forward  o_j = t_j c_j − t_{j+r/2} s_j,   o_{j+r/2} = t_{j+r/2} c_{j+r/2} + t_j s_{j+r/2};
backward g_j ← g_j c_j + g_{j+r/2} s_{j+r/2},  g_{j+r/2} ← g_{j+r/2} c_{j+r/2} − g_j s_j.
Dimensions past r pass through. megatron's function is the reference (and runs off GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(
    t_ptr,
    angles_ptr,
    out_ptr,
    batch,
    heads,
    head_dim,
    rotary,
    stride_s,
    stride_b,
    stride_h,
    BACKWARD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    position = row // batch
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_D)[None, :]
    half = rotary // 2
    inside = (h < heads) & (j < head_dim)
    rotated = j < rotary
    partner = tl.where(j < half, j + half, j - half)
    source = t_ptr + position.to(tl.int64) * stride_s + (row % batch).to(tl.int64) * stride_b
    x = tl.load(source + h * stride_h + j, mask=inside, other=0.0).to(tl.float32)
    x_partner = tl.load(source + h * stride_h + partner, mask=inside & rotated, other=0.0)
    angles = angles_ptr + position.to(tl.int64) * rotary
    angle = tl.load(angles + j, mask=rotated, other=0.0)
    cos = tl.where(rotated, tl.cos(angle), 1.0)
    if BACKWARD:  # the transposed rotation: the partner's sine, the opposite sign
        sin = tl.sin(tl.load(angles + partner, mask=rotated, other=0.0))
        sign = tl.where(j < half, 1.0, -1.0)
    else:
        sin = tl.sin(angle)
        sign = tl.where(j < half, -1.0, 1.0)
    out = x * cos + tl.where(rotated, sign * x_partner.to(tl.float32) * sin, 0.0)
    target = out_ptr + row.to(tl.int64) * heads * head_dim
    tl.store(
        target + h * head_dim + j,
        out.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
        mask=inside,
    )


def _launch(t: torch.Tensor, angles: torch.Tensor, backward: bool) -> torch.Tensor:
    if t.stride(-1) != 1:
        t = t.contiguous()
    s, b, heads, head_dim = t.shape
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    block_h, block_d = triton.next_power_of_2(heads), triton.next_power_of_2(head_dim)
    _rotate[(s * b,)](
        t,
        angles,
        out,
        b,
        heads,
        head_dim,
        angles.shape[-1],
        t.stride(0),
        t.stride(1),
        t.stride(2),
        BACKWARD=backward,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=4 if block_h * block_d <= 4096 else 8,
    )
    return out


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(angles)
        return _launch(t, angles, backward=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (angles,) = ctx.saved_tensors
        return _launch(grad, angles, backward=True), None


def rope(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """t [s, b, heads, head_dim] rotated by the angles freqs [s, 1, 1, r] (r even, r ≤
    head_dim) over its first r dimensions, as megatron's unfused RoPE (not interleaved)."""
    s, rotary = t.shape[0], freqs.shape[-1]
    if t.dim() != 4 or freqs.shape != (s, 1, 1, rotary) or rotary % 2 or rotary > t.shape[-1]:
        raise ValueError(
            f"RoPE takes t [s, b, heads, head_dim] and freqs [s, 1, 1, r] with r even and at "
            f"most head_dim; got t {tuple(t.shape)} and freqs {tuple(freqs.shape)}"
        )
    return _Rope.apply(t, freqs.reshape(s, rotary).float().contiguous())
