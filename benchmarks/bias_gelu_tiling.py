"""GPTNeoX's bias + GeLU alone, on Pythia-1b's fc1 output (8192 tokens × 8192, bf16): torch's
`F.gelu(x + b)` against the Triton kernel (kernels/bias_gelu.py) at several tilings, forward
alone and forward + backward, with the bandwidth each reaches (forward: x read, output written;
backward: x and the output's gradient read, x's gradient written). Rounds interleaved; median of
each side's per-round medians.

    python benchmarks/bias_gelu_tiling.py --out $OUT/bias_gelu_tiling.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_step_seconds, save_report

ROWS, COLUMNS = 8192, 8192
FORWARD = [(1024, 4), (2048, 4), (2048, 8), (4096, 8)]
BACKWARD = [(1024, 4, 64), (1024, 4, 16), (1024, 4, 32), (2048, 8, 32), (512, 2, 32), (2048, 4, 16)]


def _steps(x, bias, grad) -> tuple[dict, dict]:
    from megatron_mamba.kernels.bias_gelu import TILING, bias_gelu

    def forward(fn):
        def step():
            with torch.no_grad():
                fn(x, bias)

        return step

    def both(fn):
        def step():
            torch.autograd.grad(fn(x, bias), (x, bias), grad)

        return step

    torch_version = lambda x, b: F.gelu(x + b)  # noqa: E731
    forwards = {"torch": forward(torch_version)}
    for block, warps in FORWARD:
        tiling = TILING._replace(block=block, warps=warps)
        forwards[f"triton_{block}x{warps}"] = forward(lambda x, b, t=tiling: bias_gelu(x, b, t))
    boths = {"torch": both(torch_version)}
    for block, warps, rows in BACKWARD:
        tiling = TILING._replace(backward_block=block, backward_warps=warps, rows_per_program=rows)
        name = f"triton_{block}x{warps}_rows{rows}"
        boths[name] = both(lambda x, b, t=tiling: bias_gelu(x, b, t))
    return forwards, boths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(ROWS, COLUMNS, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(COLUMNS, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    tensor_bytes = x.numel() * x.element_size()
    report = {}
    sides = zip(("forward", "forward_backward"), _steps(x, bias, grad), (2, 5), strict=True)
    for label, steps, moved in sides:
        seconds = interleaved_step_seconds(steps, args.rounds)
        medians = {name: statistics.median(times) for name, times in seconds.items()}
        report[label] = {
            name: {"ms": round(s * 1e3, 4), "tb_per_s": round(moved * tensor_bytes / s / 1e12, 2)}
            for name, s in medians.items()
        }
    print(json.dumps(report, indent=1))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
