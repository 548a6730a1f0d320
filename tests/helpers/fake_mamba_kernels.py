"""Stand-ins for the CUDA extensions kernels/mamba1_fused.py calls (`selective_scan_cuda` and
causal_conv1d's `cpp_functions`), with their signatures and return values, computed by the
pure-PyTorch references and autograd. Like the kernels, they honour their inputs' strides and
allocate outputs with `empty_like` (which keeps a dense tensor's strides): so on CPU the function's
layouts, products and gradient wiring run as they would on the GPU."""

from __future__ import annotations

import importlib
import os
import sys
import types

import torch

from megatron_mamba.kernels import reference


def _scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    return reference.selective_scan(
        u, delta, A, B, C, D, z, delta_bias_d=delta_bias, delta_softplus=softplus
    )


def _like(template: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(template).copy_(value)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
    out = _like(delta, _scan(u, delta, A, B, C, D, None, delta_bias, softplus))
    out_z = _like(z, _scan(u, delta, A, B, C, D, z, delta_bias, softplus))
    return out, torch.zeros(1), out_z


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, _state, out, dz, softplus, _recompute):
    leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
    with torch.enable_grad():
        out_z = _scan(*leaves, softplus)
        grads = torch.autograd.grad(out_z, leaves, dout)
    du, ddelta, dA, dB, dC, dD, dz_value, d_bias = grads
    dz.copy_(dz_value)
    dB, dC = (_like(m, g).float() for m, g in ((B, dB), (C, dC)))
    return _like(u, du), _like(delta, ddelta), dA, dB, dC, dD, d_bias, dz, _like(out, out_z)


def conv_fwd(x, weight, bias, _seq_idx, _initial, _final, silu):
    return _like(x, reference.causal_conv1d(x, weight, bias, "silu" if silu else None))


def conv_bwd(x, weight, bias, dout, _seq_idx, _initial, _dfinal, dx, _return_initial, silu):
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    with torch.enable_grad():
        out = reference.causal_conv1d(*leaves, "silu" if silu else None)
        dx_value, dweight, dbias = torch.autograd.grad(out, leaves, dout)
    dx.copy_(dx_value)
    return dx, dweight, dbias, None


def install(monkeypatch) -> None:
    """Put the stand-ins where kernels/mamba1_fused.py imports its kernels from."""
    scan = types.ModuleType("selective_scan_cuda")
    scan.fwd, scan.bwd = scan_fwd, scan_bwd
    conv = types.ModuleType("causal_conv1d.cpp_functions")
    conv.causal_conv1d_fwd_function, conv.causal_conv1d_bwd_function = conv_fwd, conv_bwd
    package = types.ModuleType("causal_conv1d")
    package.cpp_functions = conv
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", scan)
    monkeypatch.setitem(sys.modules, "causal_conv1d", package)
    monkeypatch.setitem(sys.modules, "causal_conv1d.cpp_functions", conv)
    monkeypatch.delitem(sys.modules, "megatron_mamba.kernels.mamba1_fused", raising=False)


def route_mamba1_mixer(monkeypatch) -> list[int]:
    """Install the stand-ins and send our classic Mamba1 mixers through the one function on CPU
    (TP > 1 included: the pending paths on). Returns a list that counts its calls."""
    install(monkeypatch)
    from megatron_mamba import kernels

    whole = importlib.import_module("megatron_mamba.kernels.mamba1_fused").mamba1_mixer
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return whole(*args, **kwargs)

    monkeypatch.setattr(kernels, "mamba1_mixer", lambda hidden: counted)
    monkeypatch.setitem(os.environ, "MEGATRON_MAMBA_PENDING_KERNELS", "1")
    return calls
