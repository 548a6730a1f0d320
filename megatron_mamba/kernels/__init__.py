"""The one dispatch point for kernels.

On CUDA tensors with mamba_ssm / causal_conv1d installed, their fused kernels run; everywhere else
the pure-PyTorch references in `reference.py` do (they are also the oracle in the GPU parity tests).
The same holds for our Triton kernels of the losses over the logits (`logit_losses.py`, whose
reference is models/logit_losses.py), SwiGLU and GeLU (`swiglu.py`, `bias_gelu.py`; reference
models/fused.py), RoPE (`rope.py`; reference megatron's) and GPTNeoX's two LayerNorms of one
input (`layer_norms.py`; reference F.layer_norm twice), a block's residual sum
(`residual_sum.py`; reference models/fused.py), distillation's layer loss with its gradient
(`layer_mse.py`; reference distill/losses.py), and of the Mamba1 mixer as one function
over mamba_ssm's kernels (`mamba1_fused.py`; reference the mixer's composed path), with a CUDA
selective-scan backward of our own inside it (`scan_backward_cuda.py`; reference mamba_ssm's).
`MEGATRON_MAMBA_REFERENCE_KERNELS=1` forces the references; paths not yet tested on a GPU are
opt-in with `MEGATRON_MAMBA_PENDING_KERNELS=1`.

Triton's autotune cache is on by default (see megatron_mamba/__init__.py).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from megatron_mamba.kernels import reference


@functools.cache
def _fused():
    """The fused kernels' entry points, or None where they are not installed."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )
    except ImportError:
        return None
    return {
        "conv": causal_conv1d_fn,
        "scan": selective_scan_fn,
        "mamba1_inner": mamba_inner_fn,
        "ssd": mamba_chunk_scan_combined,
        "norm": rmsnorm_fn,
        "split_conv_ssd_norm": mamba_split_conv1d_scan_combined,
    }


def _references_forced() -> bool:
    return os.environ.get("MEGATRON_MAMBA_REFERENCE_KERNELS") == "1"


def use_fused(t: torch.Tensor) -> bool:
    return not _references_forced() and t.is_cuda and _fused() is not None


@functools.cache
def _kernel_module(name: str):
    """Our kernel module kernels/<name>.py, or None without what it needs (Triton, mamba_ssm)."""
    try:
        return importlib.import_module(f"megatron_mamba.kernels.{name}")
    except ImportError:
        return None


def _triton_kernel(t: torch.Tensor, module: str, entry: str | None = None):
    """`module` (or its function `entry`) for `t` where our Triton kernels run it (CUDA, 16 or
    32-bit, Triton installed, the references not forced); None where the torch version must."""
    if _references_forced() or not t.is_cuda or t.dtype == torch.float64:
        return None
    found = _kernel_module(module)
    return found if found is None or entry is None else getattr(found, entry)


def triton_logit_losses(logits: torch.Tensor):
    """The logit-losses module (kernels/logit_losses.py) for these logits, or None."""
    return _triton_kernel(logits, "logit_losses")


def triton_swiglu(x: torch.Tensor):
    """The SwiGLU kernel (kernels/swiglu.py) for this fc1 output, or None."""
    return _triton_kernel(x, "swiglu", "swiglu")


def triton_rope(t: torch.Tensor):
    """The RoPE kernel (kernels/rope.py) for these queries or keys, or None."""
    return _triton_kernel(t, "rope", "rope")


def triton_qkv_rope(mixed_qkv: torch.Tensor):
    """RoPE on megatron's fused QKV with its split (kernels/rope.qkv_rope), or None."""
    return _triton_kernel(mixed_qkv, "rope", "qkv_rope")


def triton_bias_gelu(x: torch.Tensor):
    """The bias-GeLU kernel (kernels/bias_gelu.py) for this fc1 output, or None."""
    return _triton_kernel(x, "bias_gelu", "bias_gelu")


def triton_gelu(y: torch.Tensor):
    """Exact GeLU's forward alone (kernels/bias_gelu.gelu) for this fc1 output, or None."""
    return _triton_kernel(y, "bias_gelu", "gelu")


def triton_gelu_backward_and_bias_grad(y: torch.Tensor):
    """GeLU's backward with its input's bias gradient in one kernel
    (kernels/bias_gelu.gelu_backward_and_bias_grad) for this pre-activation, or None."""
    return _triton_kernel(y, "bias_gelu", "gelu_backward_and_bias_grad")


def triton_layer_mse(student: torch.Tensor, teacher: torch.Tensor):
    """Distillation's LayerNorm-normalised layer loss with its gradient as one kernel
    (kernels/layer_mse.layer_mse_and_gradient) for these block outputs, or None."""
    found = _triton_kernel(student, "layer_mse")
    if found is None or not found.fits(student, teacher):
        return None
    return found.layer_mse_and_gradient


def triton_residual_sum(residual: torch.Tensor):
    """A block's residual sum as one kernel (kernels/residual_sum.py), or None."""
    return _triton_kernel(residual, "residual_sum", "residual_sum")


def triton_two_layer_norms(x: torch.Tensor):
    """Two LayerNorms of one input as one kernel each way (kernels/layer_norms.py), or None."""
    return _triton_kernel(x, "layer_norms", "two_layer_norms")


def pending_kernels() -> bool:
    """Paths whose GPU tests have not run yet are opt-in: MEGATRON_MAMBA_PENDING_KERNELS=1."""
    return os.environ.get("MEGATRON_MAMBA_PENDING_KERNELS", "0") == "1"


def cuda_scan_backward() -> bool:
    """Our CUDA selective-scan backward (kernels/scan_backward_cuda.py: dB and dC summed over a
    block's channels before their atomics) in place of mamba_ssm's: 2.56 against 2.96 ms a layer
    at CALD's shape, so the default; MEGATRON_MAMBA_CUDA_SCAN_BWD=0 keeps mamba_ssm's."""
    return os.environ.get("MEGATRON_MAMBA_CUDA_SCAN_BWD", "1") == "1"


def mamba1_mixer(hidden: torch.Tensor):
    """The Mamba1 mixer as one function in the [channels, (b l)] layout
    (kernels/mamba1_fused.py) for this input, or None where it does not run."""
    if not use_fused(hidden):
        return None
    found = _kernel_module("mamba1_fused")
    return None if found is None else found.mamba1_mixer


def causal_conv1d(x_bdl, weight_dk, bias_d=None, activation=None):
    if use_fused(x_bdl):
        # The kernel takes [b, d, l] contiguous in l, or channel-last with aligned strides.
        x_bdl = x_bdl if x_bdl.stride(-1) == 1 else x_bdl.contiguous()
        return _fused()["conv"](x_bdl, weight_dk, bias_d, activation=activation)
    return reference.causal_conv1d(x_bdl, weight_dk, bias_d, activation)


def selective_scan(u_bdl, delta_bdl, A_dn, B, C, D_d=None, z_bdl=None, **kwargs):
    """Mamba1 selective scan; see `reference.selective_scan` for the maths."""
    if use_fused(u_bdl) and kwargs.get("initial_state_bdn") is None:
        kwargs.pop("initial_state_bdn", None)
        return _fused()["scan"](
            u_bdl,
            delta_bdl,
            A_dn,
            B,
            C,
            D_d,
            z_bdl,
            delta_bias=kwargs.get("delta_bias_d"),
            delta_softplus=kwargs.get("delta_softplus", False),
            return_last_state=kwargs.get("return_last_state", False),
        )
    return reference.selective_scan(u_bdl, delta_bdl, A_dn, B, C, D_d, z_bdl, **kwargs)


def fused_mamba1_inner(xz_bdl, mixer):
    """A classic Mamba1 mixer from in_proj's output to out_proj's (without its bias) as one
    autograd function that recomputes the conv and delta in backward (mamba_ssm's
    `mamba_inner_fn`, which transformers' MambaMixer trains through); None where it does not
    run, and the caller composes the separate kernels. xz is [b, x | z, l]; returns [b, l, h].
    `mixer` holds conv1d, x_proj, dt_proj, out_proj, A_log and D under MambaMixer's names (our
    native mixer and the HF class alike)."""
    if not use_fused(xz_bdl):
        return None
    return _fused()["mamba1_inner"](
        xz_bdl,
        mixer.conv1d.weight,
        mixer.conv1d.bias,
        mixer.x_proj.weight,
        mixer.dt_proj.weight,
        mixer.out_proj.weight,
        None,
        A=-torch.exp(mixer.A_log.float()),
        D=mixer.D.float(),
        delta_bias=mixer.dt_proj.bias.float(),
        delta_softplus=True,
    )


def ssd_scan(x_blhp, dt_blh, A_h, B_blgn, C_blgn, chunk_size, D_h=None, z_blhp=None, **kwargs):
    """Mamba2 SSD; see `reference.ssd_scan` for the maths."""
    if use_fused(x_blhp):
        return _fused()["ssd"](
            x_blhp,
            dt_blh,
            A_h,
            B_blgn,
            C_blgn,
            chunk_size,
            D=D_h,
            z=z_blhp,
            dt_bias=kwargs.get("dt_bias_h"),
            dt_softplus=kwargs.get("dt_softplus", False),
            initial_states=kwargs.get("initial_state_bhpn"),
            return_final_states=kwargs.get("return_final_state", False),
        )
    return reference.ssd_scan(
        x_blhp, dt_blh, A_h, B_blgn, C_blgn, chunk_size, D_h, z_blhp, **kwargs
    )


def gated_rms_norm(x, z, weight, eps: float, group_size: int):
    """RMSNorm(x · silu(z)) per group of channels (mamba2's norm, gate before norm)."""
    if use_fused(x):
        return _fused()["norm"](
            x, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=False
        )
    return reference.gated_rms_norm(x, z, weight, eps, group_size)


def fused_mamba2_conv_scan_norm(
    zxbcdt,
    conv_weight_ck,
    conv_bias,
    dt_bias,
    A_h,
    D_h,
    chunk_size,
    norm_weight,
    eps,
    head_dim,
    groups,
):
    """Mamba2's conv, SSD and gated norm as one kernel that recomputes the conv in backward
    (mamba_ssm's `mamba_split_conv1d_scan_combined`); None where it does not run, and the caller
    composes the separate kernels. zxbcdt is [b, l, z | x | B | C | dt]."""
    if not use_fused(zxbcdt):
        return None
    return _fused()["split_conv_ssd_norm"](
        zxbcdt.contiguous(),
        conv_weight_ck,
        conv_bias,
        dt_bias,
        A_h,
        D_h,
        chunk_size,
        rmsnorm_weight=norm_weight,
        rmsnorm_eps=eps,
        headdim=head_dim,
        ngroups=groups,
        norm_before_gate=False,
    )
