"""Mamba1's selective-scan backward alone on one layer of Pythia-1b's all-mamba1 student (CALD's:
batch 4, d_inner 5120, d_state 16, length 2048, bf16, in the one-function mixer's layouts):
mamba_ssm's `selective_scan_cuda.bwd` against our CUDA kernel (kernels/scan_backward_cuda.py)
at each of its tilings, and mamba_ssm's with B and C copied into r groups (its dB and dC are
atomic adds of every channel into one [b, g, n, l] buffer: r copies spread them over r times as
many addresses; dB and dC are then summed over the copies), with each result's largest
difference from mamba_ssm's relative to its largest value. Median milliseconds of 20 calls each.

    python benchmarks/selective_scan_bwd.py --out $OUT/selective_scan_bwd.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import median_step_seconds, save_report


def inputs(batch: int, channels: int, state: int, length: int, groups: int):
    """The mixer's tensors: u [b, d, l] contiguous; delta, z, the gradient and y as
    [channels, (b l)] rows seen as [b, d, l]; B and C [b, g, n, l]; A, D, the bias fp32."""
    cuda, bf16 = dict(device="cuda"), dict(device="cuda", dtype=torch.bfloat16)

    def rows():
        return torch.randn(channels, batch, length, **bf16).transpose(0, 1)

    u = torch.randn(batch, channels, length, **bf16)
    delta, z, grad = rows() * 0.5 - 2.0, rows(), rows() * 0.1
    A = -torch.arange(1, state + 1, **cuda).float().repeat(channels, 1)
    B, C = (torch.randn(batch, groups, state, length, **bf16) for _ in range(2))
    D, bias = torch.ones(channels, **cuda), torch.rand(channels, **cuda) - 4.0
    return u, delta, A, B, C, D, z, bias, grad


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """One layer's shape, CALD's by default."""
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=5120)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=2048)


def main() -> None:
    import selective_scan_cuda

    from megatron_mamba.kernels import scan_backward_cuda
    from megatron_mamba.kernels.scan_backward_cuda import RESULTS

    parser = argparse.ArgumentParser()
    add_shape_arguments(parser)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--replicas", default="4,16,64,256", help="copies of B and C to try")
    parser.add_argument("--no-cuda", action="store_true", help="without our CUDA kernel")
    parser.add_argument("--out")
    args = parser.parse_args()
    u, delta, A, B, C, D, z, bias, grad = inputs(
        args.batch, args.channels, args.state, args.length, args.groups
    )
    y, scan_state, _ = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)  # y ungated

    def theirs():
        dz = torch.empty_like(z)
        return selective_scan_cuda.bwd(
            u, delta, A, B, C, D, z, bias, grad, scan_state, y, dz, True, True
        ), dz

    (du, ddelta, dA, dB, dC, dD, dbias, _, out_z), dz = theirs()
    reference = dict(zip(RESULTS, (du, ddelta, dA, dB, dC, dD, dbias, out_z), strict=True))
    reference["dz"] = dz
    rows = [{"name": "mamba_ssm", "ms": median_step_seconds(theirs, iters=20) * 1e3}]

    def compare(name, fn):
        got, got_dz = fn()
        mine = dict(zip(RESULTS, got, strict=True)) | {"dz": got_dz}
        differences = {
            key: ((mine[key].float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            for key, ref in reference.items()
        }
        rows.append({"name": name, "ms": median_step_seconds(fn, iters=20) * 1e3} | differences)
        print(rows[-1], flush=True)

    for copies in [int(r) for r in args.replicas.split(",") if r]:

        def replicated(copies=copies):
            b, g, n, length = B.shape
            Br, Cr = (t.unsqueeze(2).expand(b, g, copies, n, length) for t in (B, C))
            Br, Cr = (t.reshape(b, g * copies, n, length) for t in (Br, Cr))
            dz = torch.empty_like(z)
            out = selective_scan_cuda.bwd(
                u, delta, A, Br, Cr, D, z, bias, grad, scan_state, y, dz, True, True
            )
            summed = (t.view(b, g, copies, n, length).sum(2) for t in out[3:5])
            return (*out[:3], *summed, *out[5:7], out[8]), dz

        compare(f"mamba_ssm, B and C in {copies} copies", replicated)
    for threads, channels, states in [] if args.no_cuda else scan_backward_cuda.TILINGS:

        def cuda(tiling=(threads, channels, states)):
            dz = torch.empty_like(z)
            out = scan_backward_cuda.selective_scan_backward(
                u, delta, A, B, C, D, z, bias, grad, y, dz, scan_state, tiling
            )
            return out, dz

        compare(
            f"cuda, {channels} channel(s) a block, {threads} threads each, "
            f"{states} state(s) a pass",
            cuda,
        )
    base = rows[0]["ms"]
    print("| kernel | ms | × mamba_ssm | worst relative difference |\n|---|---|---|---|")
    for row in rows:
        worst = max((v for k, v in row.items() if k not in ("name", "ms")), default=0.0)
        print(f"| {row['name']} | {row['ms']:.3f} | {base / row['ms']:.2f} | {worst:.1e} |")
    save_report(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
