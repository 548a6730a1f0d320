"""Mamba1's selective-scan backward with several channels to a block (csrc/selective_scan_bwd.cu),
an alternative to mamba_ssm's `selective_scan_cuda.bwd` with the same results.

Why: mamba_ssm's kernel gives each channel its own block and adds every channel's dB and dC into
[b, g, n, l] with one fp32 atomic each; at CALD's shape those atomics alone take 1.7 of its 2.95
ms (benchmarks/scan_atomics.py). Summing a block's channels in shared memory first divides them,
and the scan itself is leaner (one-instruction exp2, 16-byte shared stores, h_t reused): 2.59
against mamba_ssm's 2.96 ms a layer (`device_run.sh scan_cuda`), correct against float64 and
mamba_ssm (tests/gpu/test_scan_backward_cuda_gpu.py). The default in kernels/mamba1_fused.py
(MEGATRON_MAMBA_CUDA_SCAN_BWD=0 keeps mamba_ssm's; so does a machine without nvcc).

The CUDA source has no torch headers: it is built once per source and GPU kind with nvcc into a
cache (MEGATRON_MAMBA_KERNEL_CACHE, default ~/.cache/megatron_mamba) and loaded with ctypes, so
no torch ABI is involved and a prebuilt library can travel with a checkout.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "selective_scan_bwd.cu"
RESULTS = ("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias", "out_z")
# (threads a channel, channels a block, states a pass); two states a pass need an even d_state
TILINGS = (
    (128, 1, 1), (128, 2, 1), (256, 1, 1), (256, 2, 1), (256, 4, 1), (256, 1, 2), (256, 2, 2)
)  # fmt: skip
DEFAULT_TILING = (256, 2, 1)
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_SAVED_CHUNK = 2048  # mamba_ssm's forward saves the scan state every 2048 positions

_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class _Params(ctypes.Structure):
    """The kernel's `Params`, field for field."""

    _fields_ = [
        *((name, _i32) for name in (
            "batch", "channels", "length", "state", "channels_per_group", "chunks", "saved_chunks"
        )),
        ("softplus", ctypes.c_bool),
        *((name, _p) for name in ("u", "delta", "z", "grad", "y")),
        *((name, _i64) for name in (
            "u_b", "u_d", "delta_b", "delta_d", "z_b", "z_d", "grad_b", "grad_d", "y_b", "y_d"
        )),
        *((name, _p) for name in ("du", "ddelta", "dz", "out_z")),
        *((name, _i64) for name in (
            "du_b", "du_d", "ddelta_b", "ddelta_d", "dz_b", "dz_d", "out_z_b", "out_z_d"
        )),
        ("A", _p), ("B", _p), ("C", _p),
        *((name, _i64) for name in ("B_b", "B_g", "B_n", "C_b", "C_g", "C_n")),
        ("D", _p), ("bias", _p), ("saved", _p),
        *((name, _p) for name in ("dA", "dB", "dC", "dD", "dbias")),
    ]  # fmt: skip


def _nvcc() -> str:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    found = shutil.which("nvcc") or (home and shutil.which("nvcc", path=str(Path(home) / "bin")))
    if not found:
        raise RuntimeError("the CUDA selective-scan backward needs nvcc (on PATH or CUDA_HOME)")
    return found


def library_path(capability: tuple[int, int]) -> Path:
    """Where the library for this source and GPU kind lives in the cache."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    cache = os.environ.get("MEGATRON_MAMBA_KERNEL_CACHE", "~/.cache/megatron_mamba")
    arch = "{}{}{}".format(*capability, "a" if capability[0] >= 9 else "")
    return Path(cache).expanduser() / f"selective_scan_bwd-{digest}-sm_{arch}.so"


def build(capability: tuple[int, int]) -> Path:
    """Compiles the source for this GPU kind unless the cache has it (written whole or not at
    all). The ranks of one machine that all start it at once take turns on a lock file: one
    compiles (~8 s), the others find its result."""
    target = library_path(capability)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _compile(target)
    return target


def _compile(target: Path) -> None:
    arch = target.stem.rsplit("sm_", 1)[1]
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [
            _nvcc(), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
            f"-gencode=arch=compute_{arch},code=sm_{arch}", str(SOURCE), "-o", str(built),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed on {SOURCE}:\n{result.stderr[-4000:]}")
        os.replace(built, target)


@functools.cache
def _library(capability: tuple[int, int]) -> ctypes.CDLL:
    library = ctypes.CDLL(str(build(capability)))
    library.megatron_mamba_scan_backward.restype = ctypes.c_int
    # params, dtype, threads a channel, channels a block, states a pass, stream
    library.megatron_mamba_scan_backward.argtypes = [ctypes.POINTER(_Params), *[_i32] * 4, _p]
    library.megatron_mamba_error_string.restype = ctypes.c_char_p
    return library


@functools.cache
def available(capability: tuple[int, int]) -> bool:
    """Whether the library builds and loads for this GPU kind. Where it cannot (no nvcc, a failed
    build), says why once, and callers keep mamba_ssm's backward."""
    try:
        _library(capability)
    except (RuntimeError, OSError) as error:
        warnings.warn(f"using mamba_ssm's selective-scan backward: {error}", stacklevel=2)
        return False
    return True


def _bgnl(m: torch.Tensor) -> torch.Tensor:
    """B or C as [b, g, n, l] (a shared [b, n, l] as one group), contiguous in l."""
    m = m.unsqueeze(1) if m.dim() == 3 else m
    return m if m.stride(3) == 1 else m.contiguous()


def fits(u, delta, A, B, C, z, grad, y, saved, tiling=DEFAULT_TILING, dz=None) -> bool:
    """Whether the kernel takes these tensors (float32 or bf16 alike, [b, d, l] contiguous in l,
    whole blocks of channels within one group, whole passes of states, the forward's states for
    sequences past 2048) and can be built for their GPU."""
    bdl = (u, delta, z, grad, y) + ((dz,) if dz is not None else ())
    dtype = u.dtype
    channels, groups = u.shape[1], B.shape[1] if B.dim() == 4 else 1
    return (
        u.is_cuda
        and dtype in _DTYPES
        and all(t.dtype == dtype and t.dim() == 3 and t.stride(2) == 1 for t in bdl)
        and B.dtype == dtype
        and C.dtype == dtype
        and A.dtype == torch.float32
        and tiling in TILINGS
        and channels % groups == 0
        and (channels // groups) % tiling[1] == 0
        and A.shape[1] % tiling[2] == 0
        and (u.shape[2] <= _SAVED_CHUNK or saved is not None)
        and available(torch.cuda.get_device_capability(u.device))
    )


def selective_scan_backward(
    u, delta, A, B, C, D, z, delta_bias, grad, y, dz, saved=None, tiling=DEFAULT_TILING
):
    """Gradients of out_z = selective_scan(u, delta, A, B, C, D, z, delta_bias,
    delta_softplus=True) for its upstream gradient `grad`, given the forward's ungated output `y`
    (mamba_ssm's `out`) and its saved states `saved` (needed past 2048 positions); dz is written
    into `dz`. Returns `RESULTS` as `selective_scan_cuda.bwd(..., True, True)` does (dB, dC
    float32 [b, g, n, l])."""
    B, C = _bgnl(B), _bgnl(C)
    if not fits(u, delta, A, B, C, z, grad, y, saved, tiling, dz):
        raise ValueError(
            f"the CUDA selective-scan backward cannot take u {tuple(u.shape)} {u.dtype}, B "
            f"{tuple(B.shape)} {B.dtype}, tiling {tiling}: expected float32 or bfloat16 [b, d, l] "
            f"tensors contiguous in l, channels a group divisible by {tiling[1]}, d_state "
            f"({A.shape[1]}) divisible by {tiling[2]}, tiling in {TILINGS}"
        )
    batch, channels, length = u.shape
    state, groups = A.shape[1], B.shape[1]
    du, ddelta, out_z = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(z)
    f32 = dict(device=u.device, dtype=torch.float32)
    dA = torch.zeros(channels, state, **f32)
    dB = torch.zeros(batch, groups, state, length, **f32)
    dC = torch.zeros(batch, groups, state, length, **f32)
    dD, dbias = torch.zeros(channels, **f32), torch.zeros(channels, **f32)
    A = A.contiguous()
    D32 = D.float().contiguous() if D is not None else None
    bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
    saved = saved.contiguous() if saved is not None else None
    params = _Params(
        batch, channels, length, state, channels // groups,
        -(-length // _SAVED_CHUNK), saved.shape[2] if saved is not None else 0, True,
        *(t.data_ptr() for t in (u, delta, z, grad, y)),
        *(s for t in (u, delta, z, grad, y) for s in t.stride()[:2]),
        *(t.data_ptr() for t in (du, ddelta, dz, out_z)),
        *(s for t in (du, ddelta, dz, out_z) for s in t.stride()[:2]),
        A.data_ptr(), B.data_ptr(), C.data_ptr(), *B.stride()[:3], *C.stride()[:3],
        *(t.data_ptr() if t is not None else None for t in (D32, bias32, saved)),
        *(t.data_ptr() for t in (dA, dB, dC, dD, dbias)),
    )  # fmt: skip
    library = _library(torch.cuda.get_device_capability(u.device))
    stream = torch.cuda.current_stream(u.device).cuda_stream
    with torch.cuda.device(u.device):
        error = library.megatron_mamba_scan_backward(
            ctypes.byref(params), _DTYPES[u.dtype], *tiling, stream
        )
    if error:
        message = library.megatron_mamba_error_string(error).decode()
        raise RuntimeError(f"the CUDA selective-scan backward failed: {message}")
    dD = dD.to(D.dtype) if D is not None else None
    dbias = dbias.to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dbias, out_z
