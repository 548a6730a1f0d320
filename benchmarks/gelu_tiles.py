"""Exact GeLU on Pythia-1b's fc1 output (8192 tokens × 8192, bf16), kernels alone: torch's
forward (`F.gelu`) and backward (`gelu_backward`, then the bias gradient's sum over tokens)
against kernels/bias_gelu.py's Triton kernels at several [rows × columns] tilings: the forward
without a bias (`gelu`) and `gelu_backward_and_bias_grad` (which sums columns into per-program
partial bias gradients as it goes: the one pass that replaces torch's two). Each side launched
20 times per timing, rounds taking turns; medians, the bandwidth each reaches, and each
candidate's largest difference from torch's result.

    python benchmarks/gelu_tiles.py --out $OUT/gelu_tiles.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_step_seconds, save_report
from megatron_mamba.kernels.bias_gelu import TILING, gelu, gelu_backward_and_bias_grad

ROWS, COLUMNS, LAUNCHES = 8192, 8192, 20
# (rows per tile, columns per tile, warps): 8 to 64 elements a thread
FORWARD = [
    (2, 1024, 4),
    (4, 1024, 4),
    (8, 1024, 4),
    (1, 4096, 4),
    (4, 2048, 8),
    (8, 512, 4),
    (16, 512, 4),
    (8, 1024, 8),
]
# (rows per tile, columns per tile, warps, rows per program); none that spills registers on
# sm_90 (ptxas -v: 8 × 1024 at 4 warps spills ~200 bytes a thread)
BACKWARD = [
    (4, 512, 4, 64),
    (8, 512, 4, 64),
    (16, 512, 4, 64),
    (4, 1024, 4, 64),
    (16, 256, 4, 64),
    (8, 512, 4, 128),
    (16, 512, 8, 128),
    (8, 1024, 8, 128),
]


def triton_forward(x, tile_rows, block, warps):
    with torch.no_grad():
        return gelu(x, TILING._replace(tile_rows=tile_rows, block=block, warps=warps))


def triton_backward(grad, x, tile_rows, block, warps, per_program):
    tiling = TILING._replace(
        backward_tile_rows=tile_rows,
        backward_block=block,
        backward_warps=warps,
        rows_per_program=per_program,
    )
    return gelu_backward_and_bias_grad(grad, x, x.dtype, tiling)


def torch_backward(grad, x):
    dx = torch.ops.aten.gelu_backward(grad, x)
    return dx, dx.sum(0)


def _repeated(fn):
    def step():
        for _ in range(LAUNCHES):
            fn()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(ROWS, COLUMNS, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(x) * 1e-3
    forwards = {"torch": lambda: F.gelu(x)}
    for tiling in FORWARD:
        forwards["triton_{}x{}_w{}".format(*tiling)] = lambda t=tiling: triton_forward(x, *t)
    backwards = {"torch": lambda: torch_backward(grad, x)}
    for tiling in BACKWARD:
        name = "triton_{}x{}_w{}_rows{}".format(*tiling)
        backwards[name] = lambda t=tiling: triton_backward(grad, x, *t)

    report: dict[str, dict] = {}
    element_bytes = x.element_size() * x.numel()
    for way, candidates, moved in (("forward", forwards, 2), ("backward", backwards, 3)):
        want = candidates["torch"]()
        errors = {}
        for name, fn in candidates.items():
            got = fn()
            pairs = zip(got, want, strict=True) if way == "backward" else [(got, want)]
            errors[name] = max(
                ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                for a, b in pairs
            )
        seconds = interleaved_step_seconds(
            {name: _repeated(fn) for name, fn in candidates.items()}, args.rounds
        )
        print(f"{way}:\n| kernel | µs a call | TB/s | largest difference / largest value |")
        print("|---|---|---|---|")
        report[way] = {}
        for name, per_round in seconds.items():
            us = statistics.median(per_round) / LAUNCHES * 1e6
            tbs = moved * element_bytes / (us * 1e-6) / 1e12
            report[way][name] = {"us": us, "tb_per_s": tbs, "relative_error": errors[name]}
            print(f"| {name} | {us:.1f} | {tbs:.2f} | {errors[name]:.1e} |")
    save_report(args.out, report)


if __name__ == "__main__":
    main()
