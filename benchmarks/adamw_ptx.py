"""The one-launch Adam kernel compiled for a GPU without one: its global loads and stores by width.

Triton compiles for a target it is told of (ptxas ships with it), so the memory access of
kernels/adamw.py can be checked on any machine with Triton installed: on the aligned path every
load and store of the four tensors should be 16 bytes wide (`ld.global.v4.b32`), one element
wide otherwise. The kernel's pointer arguments are declared 16-byte aligned, as Triton's launcher
finds them at run time for tensors from PyTorch's allocator.

    python benchmarks/adamw_ptx.py [--arch 90]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import triton
from triton.backends.compiler import GPUTarget

from megatron_mamba.kernels import adamw

POINTERS = ("param", "grad", "exp_avg", "exp_avg_sq", "step")


def memory_instructions(dtype: str, aligned: bool, arch: int) -> tuple[Counter, Counter]:
    """(loads, stores) of the kernel's PTX, counted by instruction, for `dtype` (bf16, fp32)."""
    signature = {name: f"*{dtype}" for name in POINTERS[:4]} | {"step": "*fp32"}
    signature |= {"offsets": "*i64", "numels": "*i64", "block_tensor": "*i32"}
    signature |= {"block_start": "*i64", "tensors": "i32"}
    signature |= dict.fromkeys(
        ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale"), "fp32"
    )
    signature |= dict.fromkeys(("DECOUPLED", "ALIGNED", "BLOCK"), "constexpr")
    constants = {"DECOUPLED": True, "ALIGNED": aligned, "BLOCK": adamw.BLOCK}
    aligned_pointers = {(i,): [["tt.divisibility", 16]] for i in range(len(POINTERS))}
    source = triton.compiler.ASTSource(
        fn=adamw._adam_blocks, signature=signature, constexprs=constants, attrs=aligned_pointers
    )
    kernel = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": adamw.WARPS}
    )
    ptx = kernel.asm["ptx"]
    return Counter(re.findall(r"ld\.global[.\w]*", ptx)), Counter(
        re.findall(r"st\.global[.\w]*", ptx)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200)"
    )
    args = parser.parse_args()
    print("| dtype | aligned | loads | stores |\n|---|---|---|---|")
    for dtype in ("bf16", "fp32"):
        for aligned in (False, True):
            loads, stores = memory_instructions(dtype, aligned, args.arch)
            print(f"| {dtype} | {aligned} | {dict(loads)} | {dict(stores)} |")


if __name__ == "__main__":
    main()
