"""A classic Mamba1 mixer from its input to out_proj's output as one autograd function over
mamba_ssm's selective-scan and causal_conv1d's kernels, with every [channels, positions] tensor
laid out as [channels, (batch · length)].

mamba_ssm's `mamba_inner_fn` (what transformers' MambaMixer and CALD train through) takes in_proj's
output as [b, channels, l] and returns [b, l, hidden]; between its matrix products it copies its
activations from one layout to the other: the conv output for x_proj, the scan output for
out_proj, their gradients, and, around it, in_proj's output and gradient to and from the block's
[s, b, channels]. On Pythia-1b's all-mamba1 step these copies of d_inner-wide tensors were ~35 ms
of ~199 (benchmarks/RESULTS.md). The kernels themselves read any batch and channel strides as long
as positions are contiguous, and a [channels, (b l)] matrix seen as [b, channels, l] is such a
tensor: so here in_proj writes x and z in that layout (one product with the batch-first input as
its transposed operand), and every later product, forward and backward, reads and writes it as a
plain matrix. The only copies left are of hidden-wide tensors: the block's input to batch-first and
the output back (in the caller), and B and C (d_state rows) into the scan's [b, 1, n, l].

Under tensor parallelism each rank holds its share of the channels: x_proj's product is then a
partial sum, all-reduced over the TP group forward (every rank's dt, B and C need the whole) and
its gradient all-reduced backward; in_proj's input and out_proj's partial output are the
caller's to gather and reduce, as megatron's linears would.

As `mamba_inner_fn` does, backward recomputes the conv and delta rather than keeping them. The
projections' weight gradients go straight into DDP's gradient buffer where there is one
(parallel/weight_grad.py).
`kernels.reference` and the mixer's composed path (models/mamba1.py) are the references.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import selective_scan_cuda
import torch
from causal_conv1d.cpp_functions import causal_conv1d_bwd_function, causal_conv1d_fwd_function

from megatron_mamba import kernels
from megatron_mamba.kernels import scan_backward_cuda
from megatron_mamba.parallel.weight_grad import weight_gradient


def _as_bdl(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """[channels, (b l)] (rows contiguous) seen as [b, channels, l]; no copy."""
    return rows.view(rows.shape[0], batch, -1).transpose(0, 1)


def _as_rows(bdl: torch.Tensor) -> torch.Tensor:
    """The inverse of `_as_bdl`: [b, channels, l] laid out as [channels, (b l)]; no copy (view
    raises rather than copy if the layout is another)."""
    return bdl.transpose(0, 1).view(bdl.shape[1], -1)


def _selection_matrix(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """B or C rows [n, (b l)] as the scan's [b, 1, n, l] (a small copy: n = d_state rows)."""
    return _as_bdl(rows, batch).unsqueeze(1).contiguous()


def _scan_and_out_proj(conv_out, delta, A, B, C, D, z, dt_b, out_w, out_b):
    """The selective scan gated by z, then out_proj: (y [(b l), hidden], out, scan state)."""
    out, scan_state, out_z = selective_scan_cuda.fwd(conv_out, delta, A, B, C, D, z, dt_b, True)
    y = torch.nn.functional.linear(_as_rows(out_z).t(), out_w, out_b)
    return y, out, scan_state


def _scan_and_out_proj_backward(
    dy, dz, conv_out, delta, A, B, C, D, z, dt_b, scan_state, out, out_w
):
    """Gradients of `_scan_and_out_proj` for dy [(b l), hidden], dz written into `dz`:
    (du, ddelta, dA, dB, dC, dD, d dt_b, d out_w)."""
    dout_y = _as_bdl(out_w.t() @ dy.t(), conv_out.shape[0])
    ours = kernels.cuda_scan_backward() and scan_backward_cuda.fits(
        conv_out, delta, A, B, C, z, dout_y, out, scan_state, dz=dz
    )
    if ours:
        du, ddelta, dA, dB, dC, dD, d_dt_b, out_z = scan_backward_cuda.selective_scan_backward(
            conv_out, delta, A, B, C, D, z, dt_b, dout_y, out, dz, scan_state
        )
    else:
        du, ddelta, dA, dB, dC, dD, d_dt_b, _, out_z = selective_scan_cuda.bwd(
            conv_out, delta, A, B, C, D, z, dt_b, dout_y, scan_state, out, dz, True, True
        )
    return du, ddelta, dA, dB, dC, dD, d_dt_b, weight_gradient(out_w, dy.t(), _as_rows(out_z).t())


class _Mamba1Mixer(torch.autograd.Function):
    """The classic layout (transformers' MambaMixer): in_proj → [x, z]; x_proj → [dt, B, C]."""

    @staticmethod
    def forward(
        ctx, hidden, in_w, in_b, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w, out_b, group
    ):
        batch, length, width = hidden.shape
        flat = hidden.reshape(batch * length, width)
        # [2d, (b l)]: in_proj's product with the input as its transposed operand
        xz = _rows_product(in_w, flat, in_b)
        d_inner, rank, state = xz.shape[0] // 2, dt_w.shape[1], A.shape[1]
        conv_w2 = conv_w.view(d_inner, -1)
        x, z = _as_bdl(xz[:d_inner], batch), _as_bdl(xz[d_inner:], batch)
        conv_out = causal_conv1d_fwd_function(x, conv_w2, conv_b, None, None, None, True)
        x_dbl = x_w @ _as_rows(conv_out)  # [r + 2n, (b l)]
        if group is not None:  # a partial sum over this rank's channels
            torch.distributed.all_reduce(x_dbl, group=group)
        delta = _as_bdl(dt_w @ x_dbl[:rank], batch)
        B = _selection_matrix(x_dbl[rank : rank + state], batch)
        C = _selection_matrix(x_dbl[rank + state :], batch)
        y, out, scan_state = _scan_and_out_proj(conv_out, delta, A, B, C, D, z, dt_b, out_w, out_b)
        ctx.save_for_backward(
            flat, in_w, xz, conv_w2, conv_b, x_w, x_dbl, dt_w, dt_b, A, B, C, D, scan_state, out,
            out_w,
        )  # fmt: skip
        ctx.has_in_b, ctx.has_out_b, ctx.group = in_b is not None, out_b is not None, group
        ctx.conv_shape = conv_w.shape
        return y.view(batch, length, -1)

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors
        flat, in_w, xz, conv_w2, conv_b, x_w, x_dbl, dt_w, dt_b, A, B, C, D = saved[:13]
        scan_state, out, out_w = saved[13:]
        batch = dy.shape[0]
        dy = dy.reshape(-1, dy.shape[-1])  # [(b l), hidden]
        d_inner, rank, state = xz.shape[0] // 2, dt_w.shape[1], A.shape[1]
        x, z = _as_bdl(xz[:d_inner], batch), _as_bdl(xz[d_inner:], batch)
        conv_out = causal_conv1d_fwd_function(x, conv_w2, conv_b, None, None, None, True)
        delta = _as_bdl(dt_w @ x_dbl[:rank], batch)
        dxz = torch.empty_like(xz)
        dx, dz = _as_bdl(dxz[:d_inner], batch), _as_bdl(dxz[d_inner:], batch)
        du, ddelta, dA, dB, dC, dD, d_dt_b, d_out_w = _scan_and_out_proj_backward(
            dy, dz, conv_out, delta, A, B, C, D, z, dt_b, scan_state, out, out_w
        )
        dx_dbl = torch.empty_like(x_dbl)
        for rows, grad in ((slice(rank, rank + state), dB), (slice(rank + state, None), dC)):
            _as_bdl(dx_dbl[rows], batch).copy_(grad.squeeze(1))
        ddelta = _as_rows(ddelta)
        d_dt_w = weight_gradient(dt_w, ddelta, x_dbl[:rank].t())
        torch.mm(dt_w.t(), ddelta, out=dx_dbl[:rank])
        if ctx.group is not None:  # every rank's dt, B and C took the whole sum
            torch.distributed.all_reduce(dx_dbl, group=ctx.group)
        d_x_w = weight_gradient(x_w, dx_dbl, _as_rows(conv_out).t())
        _as_rows(du).addmm_(x_w.t(), dx_dbl)  # the conv output's gradient, through x_proj too
        _, d_conv_w, d_conv_b, _ = causal_conv1d_bwd_function(
            x, conv_w2, conv_b, du, None, None, None, dx, False, True
        )
        return (
            (dxz.t() @ in_w).view(batch, -1, in_w.shape[1]),
            weight_gradient(in_w, dxz, flat),
            dxz.sum(1) if ctx.has_in_b else None,
            d_conv_w.view(ctx.conv_shape),
            d_conv_b,
            d_x_w,
            d_dt_w,
            d_dt_b,
            dA,
            dD,
            d_out_w,
            dy.sum(0) if ctx.has_out_b else None,
            None,
        )


class _GroupedLayout(NamedTuple):
    """Where x, z, B and C lie in this rank's in_proj rows; how often x and B repeat; and under
    TP the group over which dt_proj_down's gradient is summed (None: one rank, or SP, where
    megatron sums it as it does a norm's)."""

    x: slice
    z: slice
    b: slice
    c: slice
    repeat: int
    dt_down_group: object = None


class _GroupedMamba1Mixer(torch.autograd.Function):
    """MambaInLlama's layout: in_proj → [x, z, B, C], x and B as wide as the KV projections and
    repeated per d_state-wide group up to d_inner; dt from the block input (dt_proj_down). z and
    C are read in place from in_proj's rows; x and B are repeated into buffers of their own.
    Under TP each rank holds its groups: nothing to reduce inside but dt_proj_down's gradient
    (its weight is whole on every rank, its gradient here a partial sum over this rank's
    channels)."""

    @staticmethod
    def forward(
        ctx, hidden, in_w, in_b, conv_w, conv_b, dt_down_w, dt_w, dt_b, A, D, out_w, out_b, layout
    ):
        batch, length, width = hidden.shape
        flat = hidden.reshape(batch * length, width)
        proj = _rows_product(in_w, flat, in_b)  # [x | z | B | C, (b l)]
        xs, zs, bs, cs, repeat, _ = layout
        conv_w2 = conv_w.view(conv_w.shape[0], -1)
        state = A.shape[1]
        x = _as_bdl(_repeat_groups(proj[xs], repeat, state), batch)
        conv_out = causal_conv1d_fwd_function(x, conv_w2, conv_b, None, None, None, True)
        dt_low = dt_down_w @ flat.t()  # [r, (b l)]
        delta = _as_bdl(dt_w @ dt_low, batch)
        B = _groups_bgnl(_repeat_groups(proj[bs], repeat, state), batch, state).contiguous()
        C = _groups_bgnl(proj[cs], batch, state)
        z = _as_bdl(proj[zs], batch)
        y, out, scan_state = _scan_and_out_proj(conv_out, delta, A, B, C, D, z, dt_b, out_w, out_b)
        ctx.save_for_backward(
            flat, in_w, proj, conv_w2, conv_b, dt_down_w, dt_low, dt_w, dt_b, A, B, D, scan_state,
            out, out_w,
        )  # fmt: skip
        ctx.has_in_b, ctx.has_out_b, ctx.layout = in_b is not None, out_b is not None, layout
        ctx.conv_shape = conv_w.shape
        return y.view(batch, length, -1)

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors
        flat, in_w, proj, conv_w2, conv_b, dt_down_w, dt_low, dt_w, dt_b, A, B, D = saved[:12]
        scan_state, out, out_w = saved[12:]
        xs, zs, bs, cs, repeat, dt_down_group = ctx.layout
        batch, state = dy.shape[0], A.shape[1]
        dy = dy.reshape(-1, dy.shape[-1])
        x = _as_bdl(_repeat_groups(proj[xs], repeat, state), batch)
        conv_out = causal_conv1d_fwd_function(x, conv_w2, conv_b, None, None, None, True)
        delta = _as_bdl(dt_w @ dt_low, batch)
        C, z = _groups_bgnl(proj[cs], batch, state), _as_bdl(proj[zs], batch)
        dproj = torch.empty_like(proj)
        du, ddelta, dA, dB, dC, dD, d_dt_b, d_out_w = _scan_and_out_proj_backward(
            dy, _as_bdl(dproj[zs], batch), conv_out, delta, A, B, C, D, z, dt_b, scan_state, out,
            out_w,
        )  # fmt: skip
        _groups_bgnl(dproj[cs], batch, state).copy_(dC)
        groups = dB.shape[1] // repeat
        dB = dB.view(batch, groups, repeat, state, -1).sum(2)
        _groups_bgnl(dproj[bs], batch, state).copy_(dB)
        dx = torch.empty_like(x)
        _, d_conv_w, d_conv_b, _ = causal_conv1d_bwd_function(
            x, conv_w2, conv_b, du, None, None, None, dx, False, True
        )
        dx = _as_rows(dx)
        torch.sum(dx.view(groups, repeat, state, -1), 1, out=dproj[xs].view(groups, state, -1))
        ddelta = _as_rows(ddelta)
        d_dt_low = dt_w.t() @ ddelta  # [r, (b l)]
        d_hidden = torch.addmm(d_dt_low.t() @ dt_down_w, dproj.t(), in_w)
        d_dt_down_w = d_dt_low @ flat
        if dt_down_group is not None:
            torch.distributed.all_reduce(d_dt_down_w, group=dt_down_group)
        return (
            d_hidden.view(batch, -1, in_w.shape[1]),
            weight_gradient(in_w, dproj, flat),
            dproj.sum(1) if ctx.has_in_b else None,
            d_conv_w.view(ctx.conv_shape),
            d_conv_b,
            d_dt_down_w,
            weight_gradient(dt_w, ddelta, dt_low.t()),
            d_dt_b,
            dA,
            dD,
            d_out_w,
            dy.sum(0) if ctx.has_out_b else None,
            None,
        )


def _rows_product(w: torch.Tensor, flat: torch.Tensor, bias: torch.Tensor | None):
    """w @ flat.T (+ bias per row): a linear's output [out, (b l)] from its input [(b l), in]."""
    return w @ flat.t() if bias is None else torch.addmm(bias[:, None], w, flat.t())


def _repeat_groups(rows: torch.Tensor, repeat: int, state: int) -> torch.Tensor:
    """Rows [(g n), (b l)] with each n-row group repeated in place: [(g r n), (b l)] (a copy)."""
    groups = rows.shape[0] // state
    expanded = rows.view(groups, 1, state, -1).expand(groups, repeat, state, -1)
    return expanded.reshape(groups * repeat * state, -1)


def _groups_bgnl(rows: torch.Tensor, batch: int, state: int) -> torch.Tensor:
    """Rows [(g n), (b l)] seen as the scan's per-group B or C [b, g, n, l]; no copy."""
    return rows.view(rows.shape[0] // state, state, batch, -1).permute(2, 0, 1, 3)


def mamba1_mixer(
    hidden_bld: torch.Tensor, mixer, group=None, sequence_parallel: bool = False
) -> torch.Tensor:
    """out_proj's output [b, l, hidden] of our native Mamba1 `mixer` (in_proj, conv1d, x_proj or
    dt_proj_down, dt_proj, A_log, D, out_proj) on its whole input [b, l, hidden]: with out_proj's
    bias on one rank; given a TP `group`, this rank's partial sum without it (the input gathered
    or copied to every rank before, as `sequence_parallel` says)."""
    if mixer.dims.grouped:
        x_end, z_end, b_end, _ = itertools.accumulate(
            n // mixer.tp for n in mixer.dims.in_proj_segments
        )
        extra = _GroupedLayout(
            slice(0, x_end),
            slice(x_end, z_end),
            slice(z_end, b_end),
            slice(b_end, None),
            mixer.dims.repeat,
            group if not sequence_parallel else None,
        )
        function, selection = _GroupedMamba1Mixer, mixer.dt_proj_down.weight
    else:
        function, selection, extra = _Mamba1Mixer, mixer.x_proj.weight, group
    return function.apply(
        hidden_bld.contiguous(),
        mixer.in_proj.weight,
        mixer.in_proj.bias,
        mixer.conv1d.weight,
        mixer.conv1d.bias,
        selection,
        mixer.dt_proj.weight,
        mixer.dt_proj.bias.float(),
        -torch.exp(mixer.A_log.float()),
        mixer.D.float(),
        mixer.out_proj.weight,
        mixer.out_proj.bias if group is None else None,
        extra,
    )
