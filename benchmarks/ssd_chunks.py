"""mamba_ssm's fused Mamba2 conv + SSD + gated norm (`mamba_split_conv1d_scan_combined`, what
both sides of the mamba2 benchmark train through) forward + backward at the benchmark's shape
(Pythia-1b all-mamba2: 64 heads of 64, one group, d_state 128; 4 × 2048 tokens, bf16) for several
chunk sizes. The chunked algorithm computes the same recurrence at any chunk size, so the chunk
is the kernels' choice as much as the model's: this measures whether another than the configured
256 is faster on this GPU, and how far its outputs and gradients lie from 256's.

    python benchmarks/ssd_chunks.py --out $OUT/ssd_chunks.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

from benchmarks.common import interleaved_step_seconds, save_report

BATCH, LENGTH, HEADS, HEAD_DIM, STATE, GROUPS = 4, 2048, 64, 64, 128, 1
CHUNKS = (256, 128, 64)


def _inputs():
    generator = torch.Generator(device="cuda").manual_seed(0)
    d_inner, conv = HEADS * HEAD_DIM, HEADS * HEAD_DIM + 2 * GROUPS * STATE

    def randn(*shape, scale=1.0):  # bf16, as the model's weights and activations
        t = torch.randn(shape, device="cuda", generator=generator) * scale
        return t.bfloat16().requires_grad_()

    return {
        "zxbcdt": randn(BATCH, LENGTH, d_inner + conv + HEADS, scale=0.5),
        "conv1d_weight": randn(conv, 4, scale=0.3),
        "conv1d_bias": randn(conv, scale=0.1),
        "dt_bias": randn(HEADS, scale=0.5),
        # fp32, as the mixer passes −exp(A_log.float())
        "A": (-torch.rand(HEADS, device="cuda", generator=generator) * 8 - 1).requires_grad_(),
        "D": randn(HEADS),
        "rmsnorm_weight": randn(d_inner),
    }


def _pass(inputs, grad_out, chunk):
    out = mamba_split_conv1d_scan_combined(
        inputs["zxbcdt"], inputs["conv1d_weight"], inputs["conv1d_bias"], inputs["dt_bias"],
        inputs["A"], inputs["D"], chunk, rmsnorm_weight=inputs["rmsnorm_weight"],
        rmsnorm_eps=1e-5, headdim=HEAD_DIM, ngroups=GROUPS, norm_before_gate=False,
    )  # fmt: skip
    grads = torch.autograd.grad(out, list(inputs.values()), grad_out)
    return out.detach(), grads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    inputs = _inputs()
    generator = torch.Generator(device="cuda").manual_seed(1)
    grad_out = torch.randn(BATCH, LENGTH, HEADS * HEAD_DIM, device="cuda", generator=generator)
    grad_out = grad_out.bfloat16()
    passes = {chunk: _pass(inputs, grad_out, chunk) for chunk in CHUNKS}
    reference_out, reference_grads = passes[CHUNKS[0]]
    report = {}
    for chunk, (out, grads) in passes.items():
        report[chunk] = {
            "output_difference": float(
                (out - reference_out).abs().max() / reference_out.abs().max()
            ),
            "largest_gradient_difference": max(
                float((g - r).abs().max() / r.abs().max())
                for g, r in zip(grads, reference_grads, strict=True)
            ),
        }
    del passes
    steps = {chunk: (lambda c=chunk: _pass(inputs, grad_out, c)) for chunk in CHUNKS}
    seconds = interleaved_step_seconds(steps, args.rounds)
    print("| chunk | ms forward + backward | × chunk 256 | output Δ | largest gradient Δ |")
    print("|---|---|---|---|---|")
    base = statistics.median(seconds[CHUNKS[0]])
    for chunk, times in seconds.items():
        median = statistics.median(times)
        row = report[chunk] | {"seconds": times, "median_s": median}
        report[chunk] = row
        print(
            f"| {chunk} | {median * 1e3:.2f} | {base / median:.2f} | "
            f"{row['output_difference']:.1e} | {row['largest_gradient_difference']:.1e} |"
        )
    save_report(args.out, {str(k): v for k, v in report.items()})


if __name__ == "__main__":
    main()
