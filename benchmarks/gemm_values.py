"""Does a bf16 GEMM's time on this GPU depend on the values it multiplies?

The attention profile found every large kernel both sides run 3–5% slower a call on ours: the
same cuBLAS kernel on the same shapes. One explanation needs nothing of our code: the GPU's
power draw, and so its clock under a power cap, depends on the operands' bits. This times
Pythia-1b's fc1 product ([8192, 2048] × [2048, 8192], bf16) with operands drawn at several
scales, the kinds taking turns over rounds; a spread well above the rounds' own noise says the
values matter.

    python benchmarks/gemm_values.py --out $OUT/gemm_values.json
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import interleaved_step_seconds, save_report

PRODUCTS = 10  # a step: long enough for the clock to settle under the load
# (name, how the activations and weights are drawn)
KINDS = {
    "normal, std 1 and 0.02": (lambda t: t.normal_(0, 1), lambda t: t.normal_(0, 0.02)),
    "normal, std 1 and 0.0035 (megatron's scaled output init, 16 layers)": (
        lambda t: t.normal_(0, 1),
        lambda t: t.normal_(0, 0.02 / (2 * 16) ** 0.5),
    ),
    "uniform ±1, both": (lambda t: t.uniform_(-1, 1), lambda t: t.uniform_(-1, 1)),
    "half zeros (GeLU-like activations)": (
        lambda t: t.normal_(0, 1).clamp_(min=0),
        lambda t: t.normal_(0, 0.02),
    ),
    "all zeros": (lambda t: t.zero_(), lambda t: t.zero_()),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--inner", type=int, default=2048)
    parser.add_argument("--outer", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    steps = {}
    for name, (draw_x, draw_w) in KINDS.items():
        x = draw_x(torch.empty(args.tokens, args.inner, device="cuda", dtype=torch.bfloat16))
        w = draw_w(torch.empty(args.outer, args.inner, device="cuda", dtype=torch.bfloat16))

        def step(x=x, w=w):
            for _ in range(PRODUCTS):
                torch.mm(x, w.t())

        steps[name] = step
    seconds = interleaved_step_seconds(steps, args.rounds)
    flops = 2 * args.tokens * args.inner * args.outer * PRODUCTS
    print("| operands | µs a product per round | median TFLOP/s |\n|---|---|---|")
    rows = []
    for name, times in seconds.items():
        per_product = [t / PRODUCTS * 1e6 for t in times]
        tflops = flops / statistics.median(times) / 1e12
        rows.append({"operands": name, "us": per_product, "tflops": tflops})
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in per_product)} | {tflops:.0f} |")
    save_report(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
