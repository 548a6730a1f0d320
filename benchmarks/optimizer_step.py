"""The optimizer step alone: megatron's stock fallback against the trainer's, bf16, one GPU.

The model is the DPO benchmark's Mistral-shaped hybrid (1.2B parameters), built in bf16 and
wrapped in megatron DDP (fp32 gradient buffer) with random gradients. Measured in one process:

- stock: `get_megatron_optimizer` as megatron-core 0.16.1 runs without apex or Transformer
  Engine (torch AdamW with `foreach`, Python-loop multi-tensor helpers);
- ours: `megatron_mamba.training.optimizer.megatron_optimizer` (fused AdamW, `_foreach` helpers);
- bf16 AdamW: torch's fused AdamW directly on the bf16 weights, as TRL/transformers' Trainer
  runs a bf16 model (no fp32 master weights or moments: a floor, not the same arithmetic);
- ours without master weights (`train.fp32_master_weights=false`): the same arithmetic as bf16
  AdamW through megatron's optimizer, on a bf16 gradient buffer;
- `_one_launch` beside each of ours and the bf16 AdamW: the same with `train.adam_kernel=
  one_launch` (training/adamw.py: one Triton launch per parameter group).

All with clipping at 1.0 (on, as in training). Median of 10 steps after 3 warmup.

    python benchmarks/optimizer_step.py --out $OUT/optimizer_step.json
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import median_step_seconds, save_report

SHAPE = dict(
    arch="llama",
    num_layers=16,
    hidden_size=2048,
    num_attention_heads=16,
    num_query_groups=4,
    ffn_hidden_size=5632,
    vocab_size=32000,
    layer_pattern="MA" * 8,
)


def _model_and_ddp(grad_reduce_in_fp32: bool = True):
    from megatron_mamba.config import ModelConfig, ParallelConfig, RunPrecision
    from megatron_mamba.models.build import build_model
    from megatron_mamba.training.ddp import wrap_ddp

    model = build_model(
        ModelConfig(**SHAPE), ParallelConfig(), RunPrecision("bf16"), cpu_initialization=False
    )
    ddp = wrap_ddp(model.cuda(), grad_reduce_in_fp32=grad_reduce_in_fp32)
    for p in ddp.module.parameters():
        p.main_grad.normal_(0, 1e-3)
    return ddp


def _megatron_step(optimizer):
    def step():
        ok, _, _ = optimizer.step()
        assert ok

    return step


def main() -> None:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_mamba.runtime import init_runtime
    from megatron_mamba.training.adamw import use_one_launch_adam
    from megatron_mamba.training.optimizer import megatron_optimizer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    init_runtime(seed=0)
    config = OptimizerConfig(
        optimizer="adam", lr=1e-5, bf16=True, params_dtype=torch.bfloat16, clip_grad=1.0
    )
    results = {}
    ddp = _model_and_ddp()
    params = sum(p.numel() for p in ddp.module.parameters())
    # Stock first: `megatron_optimizer` replaces megatron's fallback helpers for the process.
    results["stock"] = median_step_seconds(_megatron_step(get_megatron_optimizer(config, [ddp])))
    results["ours"] = median_step_seconds(_megatron_step(megatron_optimizer(ddp, config)))
    one_launch = megatron_optimizer(ddp, config, one_launch_adam=True)
    results["ours_one_launch"] = median_step_seconds(_megatron_step(one_launch))
    del one_launch
    weights = [p for p in ddp.module.parameters()]
    for p in weights:
        p.grad = p.main_grad.bfloat16()
    bf16 = torch.optim.AdamW(weights, lr=1e-5, fused=True)

    def bf16_step():
        torch.nn.utils.clip_grad_norm_(weights, 1.0, foreach=True)
        bf16.step()

    results["bf16_adamw"] = median_step_seconds(bf16_step)
    assert use_one_launch_adam(bf16)
    results["bf16_adamw_one_launch"] = median_step_seconds(bf16_step)
    pure = _model_and_ddp(grad_reduce_in_fp32=False)
    config.bf16 = False  # train.fp32_master_weights=false: megatron's FP32Optimizer on bf16
    pure_step = _megatron_step(megatron_optimizer(pure, config))
    results["ours_no_master"] = median_step_seconds(pure_step)
    pure_one_launch = megatron_optimizer(pure, config, one_launch_adam=True)
    results["ours_no_master_one_launch"] = median_step_seconds(_megatron_step(pure_one_launch))
    report = {
        "parameters": params,
        "step_ms": {k: round(v * 1e3, 2) for k, v in results.items()},
        "ours_speedup_over_stock": round(results["stock"] / results["ours"], 2),
    }
    print(json.dumps(report, indent=1))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
