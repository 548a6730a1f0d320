"""The Adam update alone: torch's fused AdamW against the one-launch kernel at several block
sizes and warp counts, on the tensors of the DPO benchmark's 1.2B hybrid (optimizer_step.py's
shape), bf16 (weights, gradients and moments as Trainer keeps them) and fp32 (megatron's
master weights and moments with an fp32 gradient buffer). No clipping, no norm: the kernels'
own time and the bandwidth it reaches (7 bytes moved per element and byte of the dtype: four
tensors read, three written). Rounds interleaved; median of each side's per-round medians.

    python benchmarks/adamw_blocks.py --out $OUT/adamw_blocks.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from benchmarks.common import interleaved_step_seconds, save_report
from benchmarks.optimizer_step import SHAPE

CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8), (8192, 16)]


def _shapes() -> list[torch.Size]:
    from megatron_mamba.config import ModelConfig, ParallelConfig, RunPrecision
    from megatron_mamba.models.build import build_model

    with torch.device("meta"):
        model = build_model(ModelConfig(**SHAPE), ParallelConfig(), RunPrecision("bf16"))
    return [p.shape for p in model.parameters()]


def _steps(shapes, dtype) -> dict:
    from megatron_mamba.kernels import adamw
    from megatron_mamba.kernels.tensor_blocks import TensorBlocks

    def lists():
        params = [torch.randn(s, device="cuda", dtype=dtype) for s in shapes]
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        return params, grads

    params, grads = lists()
    fused = torch.optim.AdamW([torch.nn.Parameter(p) for p in params], lr=1e-5, fused=True)
    for p, g in zip(fused.param_groups[0]["params"], grads, strict=True):
        p.grad = g
    steps = {"torch_fused": fused.step}
    params, grads = lists()
    moments = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    counts = [torch.ones((), device="cuda") for _ in params]
    for block, warps in CONFIGS:
        tables = TensorBlocks()

        def one_launch(block=block, warps=warps, tables=tables):
            adamw.adam_step(
                params, grads, *moments, counts, tables, lr=1e-5, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.01, decoupled=True, block=block, warps=warps,
            )  # fmt: skip

        steps[f"one_launch_{block}x{warps}"] = one_launch
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from megatron_mamba.runtime import init_runtime

    init_runtime(seed=0)
    shapes = _shapes()
    elements = sum(s.numel() for s in shapes)
    report = {"parameters": elements, "rounds": args.rounds}
    for dtype in (torch.bfloat16, torch.float32):
        seconds = interleaved_step_seconds(_steps(shapes, dtype), args.rounds)
        moved = 7 * elements * torch.finfo(dtype).bits // 8
        medians = {name: statistics.median(times) for name, times in seconds.items()}
        report[str(dtype).removeprefix("torch.")] = {
            name: {"ms": round(s * 1e3, 3), "tb_per_s": round(moved / s / 1e12, 2)}
            for name, s in medians.items()
        }
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=1))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
