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

`qkv_rope` takes megatron's fused QKV output [s, b, groups, (q heads per group + 2) · head_dim]
whole and returns the rotated queries and keys and the values' view, as megatron's
`apply_fused_qkv_rotary_pos_emb` hook does: its backward writes the queries' and keys'
gradients straight into their places in one [s, b, groups, …] gradient, and the values' by the
same kernel rotating nothing. Split first and rotated apart, autograd builds that gradient with
a `cat` of all three (0.8 ms a step of Pythia-1b's attention-only model on an H200).
"""

from __future__ import annotations

from typing import NamedTuple

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
    # t's and out's strides in elements over (position, batch row, group, head in its group):
    # head h is head h % per_group of group h // per_group
    in_s,
    in_b,
    in_g,
    in_h,
    out_s,
    out_b,
    out_g,
    out_h,
    per_group,
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
    group, member = h // per_group, h % per_group
    batch_row = (row % batch).to(tl.int64)
    source = t_ptr + position.to(tl.int64) * in_s + batch_row * in_b + group * in_g + member * in_h
    x = tl.load(source + j, mask=inside, other=0.0).to(tl.float32)
    x_partner = tl.load(source + partner, mask=inside & rotated, other=0.0)
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
    target = out_ptr + position.to(tl.int64) * out_s + batch_row * out_b
    target += group * out_g + member * out_h
    tl.store(
        target + j,
        out.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
        mask=inside,
    )


class _Heads(NamedTuple):
    """Where head `h` of [s, b, heads, head_dim] rows lies: strides in elements over position,
    batch row, group and head in its group (head h is head h % per_group of group
    h // per_group), the last dimension contiguous."""

    position: int
    batch: int
    group: int
    head: int


def _heads_of(t: torch.Tensor, per_group: int = 1) -> _Heads:
    """The heads of t [s, b, heads, head_dim], `per_group` to a group."""
    return _Heads(t.stride(0), t.stride(1), t.stride(2) * per_group, t.stride(2))


def _launch(
    t: torch.Tensor,
    angles: torch.Tensor,
    backward: bool,
    shape: tuple[int, int, int, int],
    t_heads: _Heads,
    out: torch.Tensor,
    out_heads: _Heads,
    per_group: int = 1,
    rotary: int | None = None,
) -> torch.Tensor:
    """Rotate rows of `shape` [s, b, heads, head_dim] read from t into out over their first
    `rotary` dimensions (all of the angles' by default; 0 copies); returns out."""
    s, b, heads, head_dim = shape
    block_h, block_d = triton.next_power_of_2(heads), triton.next_power_of_2(head_dim)
    _rotate[(s * b,)](
        t,
        angles,
        out,
        b,
        heads,
        head_dim,
        angles.shape[-1] if rotary is None else rotary,
        *t_heads,
        *out_heads,
        per_group,
        BACKWARD=backward,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=4 if block_h * block_d <= 4096 else 8,
    )
    return out


def _rotated(t: torch.Tensor, angles: torch.Tensor, backward: bool) -> torch.Tensor:
    """t [s, b, heads, head_dim] rotated into a new contiguous tensor."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    return _launch(t, angles, backward, t.shape, _heads_of(t), out, _heads_of(out))


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(angles)
        return _rotated(t, angles, backward=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (angles,) = ctx.saved_tensors
        return _rotated(grad, angles, backward=True), None


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


class _QkvRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mixed: torch.Tensor, angles: torch.Tensor, per_group: int):
        s, b, groups, width = mixed.shape
        head_dim = width // (per_group + 2)
        strides = mixed.stride()
        # within a group: per_group query heads, the key head, the value head, head_dim apart
        in_groups = _Heads(strides[0], strides[1], strides[2], head_dim)
        q = mixed.new_empty(s, b, groups * per_group, head_dim)
        k = mixed.new_empty(s, b, groups, head_dim)
        _launch(mixed, angles, False, q.shape, in_groups, q, _heads_of(q, per_group), per_group)
        keys = mixed[..., per_group * head_dim :]
        _launch(keys, angles, False, k.shape, in_groups, k, _heads_of(k))
        ctx.save_for_backward(angles)
        ctx.per_group, ctx.shape, ctx.dtype = per_group, mixed.shape, mixed.dtype
        return q, k, mixed[..., (per_group + 1) * head_dim :]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        (angles,) = ctx.saved_tensors
        per_group = ctx.per_group
        s, b, groups, width = ctx.shape
        head_dim = width // (per_group + 2)
        grad = torch.empty(ctx.shape, dtype=ctx.dtype, device=angles.device)
        out_groups = _Heads(*grad.stride()[:3], head_dim)
        q_part, k_part, v_part = torch.split(grad, [per_group * head_dim, head_dim, head_dim], -1)
        for g, part, heads in ((dq, q_part, per_group), (dk, k_part, 1)):
            if g is None:
                part.zero_()
                continue
            g = g if g.stride(-1) == 1 else g.contiguous()
            _launch(g, angles, True, g.shape, _heads_of(g, heads), part, out_groups, heads)
        if dv is None:
            v_part.zero_()
        else:  # torch's copy into the strided slice runs its generic kernel (45 µs, Pythia-1b)
            dv = dv if dv.stride(-1) == 1 else dv.contiguous()
            _launch(dv, angles, True, dv.shape, _heads_of(dv), v_part, out_groups, rotary=0)
        return grad, None, None


def qkv_rope(
    mixed: torch.Tensor, freqs: torch.Tensor, per_group: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's fused QKV [s, b, groups, (per_group + 2) · head_dim] as (queries [s, b,
    groups · per_group, head_dim] and keys [s, b, groups, head_dim], both rotated by freqs
    [s, 1, 1, r] as `rope` rotates them, and the values' view [s, b, groups, head_dim])."""
    s, rotary = mixed.shape[0], freqs.shape[-1]
    width = mixed.shape[-1] if mixed.dim() == 4 else 0
    head_dim = width // (per_group + 2) if width % (per_group + 2) == 0 else 0
    if not head_dim or freqs.shape != (s, 1, 1, rotary) or rotary % 2 or rotary > head_dim:
        raise ValueError(
            f"qkv_rope takes [s, b, groups, ({per_group} + 2) · head_dim] and freqs "
            f"[s, 1, 1, r] with r even and at most head_dim; got {tuple(mixed.shape)} and "
            f"freqs {tuple(freqs.shape)}"
        )
    if mixed.stride(-1) != 1:
        mixed = mixed.contiguous()
    return _QkvRope.apply(mixed, freqs.reshape(s, rotary).float().contiguous(), per_group)
