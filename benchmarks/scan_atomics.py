"""How much of mamba_ssm's selective-scan backward could its atomics of dB and dC be? Its kernel
adds every channel's contribution to dB[b, n, l] and dC[b, n, l] with one fp32 atomic add each:
at CALD's shape (batch 4, d_inner 5120, d_state 16, length 2048) that is 2 × 671M atomics a
layer. `scan_copies` showed that spreading them over more addresses changes nothing, which says
nothing about their number. This times a kernel that does only those atomics (values computed
in registers, no loads), each program summing `r` channels first (r = 1 is mamba_ssm's count),
beside mamba_ssm's backward at the same shape.

    python benchmarks/scan_atomics.py --out $OUT/scan_atomics.json
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from benchmarks.common import median_step_seconds, save_report


@triton.jit
def _atomics_only(
    db, dc, channels, STATE: tl.constexpr, LENGTH: tl.constexpr, SUMMED: tl.constexpr,
    BLOCK: tl.constexpr, SCALAR: tl.constexpr,
):  # fmt: skip
    group, batch = tl.program_id(0), tl.program_id(1)
    for n in range(STATE):
        row = (batch * STATE + n) * LENGTH
        for start in range(0, LENGTH, BLOCK):
            position = start + tl.arange(0, BLOCK)
            total = tl.zeros([BLOCK], tl.float32)
            for c in range(SUMMED):  # stand-in for each channel's contribution
                total += (group * SUMMED + c + n).to(tl.float32) * position.to(tl.float32)
            if SCALAR:  # one fp32 atomic an element, as mamba_ssm's atomicAdd
                _scalar_add(db + row + position, total * 1e-9)
                _scalar_add(dc + row + position, total * 2e-9)
            else:  # Triton's own: four elements an instruction
                tl.atomic_add(db + row + position, total * 1e-9, sem="relaxed")
                tl.atomic_add(dc + row + position, total * 2e-9, sem="relaxed")


@triton.jit
def _scalar_add(pointers, values):
    tl.inline_asm_elementwise(
        "atom.global.gpu.relaxed.add.f32 $0, [$1], $2;", "=r,l,r", [pointers.to(tl.int64), values],
        dtype=tl.float32, is_pure=False, pack=1,
    )  # fmt: skip


def atomics_only(batch, channels, state, length, summed, block=2048, warps=4, scalar=True):
    db = torch.zeros(batch, state, length, device="cuda")
    dc = torch.zeros_like(db)
    grid = (channels // summed, batch)
    _atomics_only[grid](db, dc, channels, state, length, summed, block, scalar, num_warps=warps)
    return db, dc


def main() -> None:
    import selective_scan_cuda

    from benchmarks.selective_scan_bwd import add_shape_arguments, inputs

    parser = argparse.ArgumentParser()
    add_shape_arguments(parser)
    parser.add_argument("--out")
    args = parser.parse_args()
    u, delta, A, B, C, D, z, bias, grad = inputs(
        args.batch, args.channels, args.state, args.length, 1
    )
    y, scan_state, _ = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)

    def theirs():
        dz = torch.empty_like(z)
        selective_scan_cuda.bwd(u, delta, A, B, C, D, z, bias, grad, scan_state, y, dz, True, True)

    rows = [{"name": "mamba_ssm backward (whole)", "ms": median_step_seconds(theirs, iters=20)}]
    shape = (args.batch, args.channels, args.state, args.length)
    for summed in (1, 2, 4, 8, 32):
        for block, warps, scalar in ((2048, 4, True), (512, 4, True), (2048, 4, False)):
            ms = median_step_seconds(
                lambda s=summed, b=block, w=warps, c=scalar: atomics_only(*shape, s, b, w, c),
                iters=20,
            )
            kind = "scalar" if scalar else "v4"
            rows.append({"name": f"atomics only, {summed} channel(s) summed first, {kind}, "
                         f"{block}/{warps}w", "ms": ms})  # fmt: skip
            print(rows[-1], flush=True)
    print("| kernel | ms | atomics (×1e6) |\n|---|---|---|")
    for row in rows:
        row["ms"] *= 1e3
        summed = int(row["name"].split(", ")[1].split()[0]) if "atomics" in row["name"] else 1
        count = 2 * args.batch * args.channels * args.state * args.length / summed / 1e6
        print(f"| {row['name']} | {row['ms']:.3f} | {count:.0f} |")
    save_report(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
