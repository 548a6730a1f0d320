"""Distillation's layer loss with its gradient for the 15 distilled blocks of Pythia-1b's step
(block outputs [2048, 4, 2048] bf16): torch's path (distill/losses.block_mse_and_gradient with
the references forced) against the one kernel (kernels/layer_mse.py); rounds taking turns,
medians, and the bandwidth each reaches (both outputs read, the gradient written).

    python benchmarks/layer_mse.py --out $OUT/layer_mse.json
"""

from __future__ import annotations

import argparse
import os
import statistics
from unittest import mock

import torch

from benchmarks.common import interleaved_step_seconds, save_report
from megatron_mamba.distill.losses import block_mse_and_gradient

SHAPE, BLOCKS = (2048, 4, 2048), 15


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    generator = torch.Generator(device="cuda").manual_seed(0)
    pairs = [
        tuple(torch.randn(SHAPE, device="cuda", generator=generator).bfloat16() for _ in "st")
        for _ in range(BLOCKS)
    ]

    def losses():
        for student, teacher in pairs:
            block_mse_and_gradient(student, teacher, "layernorm", weight=15.0)

    def torch_losses():
        with mock.patch.dict(os.environ, {"MEGATRON_MAMBA_REFERENCE_KERNELS": "1"}):
            losses()

    sides = {"torch": torch_losses, "kernel": losses}
    seconds = interleaved_step_seconds(sides, args.rounds)
    bytes_moved = BLOCKS * 3 * torch.Size(SHAPE).numel() * 2
    report = {}
    print("| side | ms for 15 blocks | TB/s (3 passes of bf16) |\n|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times)
        report[name] = {"seconds": times, "median_s": median}
        print(f"| {name} | {median * 1e3:.2f} | {bytes_moved / median / 1e12:.2f} |")
    save_report(args.out, report)


if __name__ == "__main__":
    main()
