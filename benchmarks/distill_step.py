"""A distillation step against a student-only step on the same student, bf16, one GPU.

CALD's setting: Pythia-1b shape, every layer a mamba1 mixer (d_inner 5120, dt_rank 160), the
attention teacher frozen; micro-batch 4 × 2048 tokens. Both sides run megatron's schedule on
the same objective code the trainer uses (forward + backward, no optimizer step): student-only
is cross-entropy; distillation adds the teacher's forward, CE + 15 · layer loss + 1 · logits KL.

    torchrun --nproc_per_node 1 benchmarks/distill_step.py --out $OUT/distill_step.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from benchmarks.common import median_step_seconds
from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.objective import LanguageModelling

SEQ, MICRO = 2048, 4
CALD_MAMBA1 = {"layout": "classic", "d_inner": 5120, "dt_rank": 160, "d_state": 16}


def step_fn(objective, student, tokens):
    schedule = get_forward_backward_func()

    def step():
        objective.begin_step(1, 1.0, 1)
        schedule(
            forward_step_func=lambda batches, model: objective.forward_step(next(batches), model),
            data_iterator=iter([tokens]),
            model=student,
            num_microbatches=1,
            seq_length=SEQ,
            micro_batch_size=MICRO * objective.micro_batch_factor,
        )
        student.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    init_runtime(seed=1)
    bf16 = RunPrecision("bf16")
    cfg = preset("pythia-1b", layer_pattern="M" * 16, mamba=CALD_MAMBA1)
    student = build_model(cfg, ParallelConfig(), bf16, cpu_initialization=False).cuda()
    teacher = build_model(preset("pythia-1b"), ParallelConfig(), bf16, cpu_initialization=False)
    teacher.cuda().eval().requires_grad_(False)
    tokens = torch.randint(0, cfg.vocab_size, (MICRO, SEQ + 1), device="cuda")

    alone = median_step_seconds(step_fn(LanguageModelling(), student, tokens))
    distill = DistillConfig(
        teacher="in memory", alpha_layer_distill_loss=15.0, alpha_logits_distill_loss=1.0
    )
    objective = Distillation(
        student, teacher, distill, cfg.num_layers, total_steps=1, vocab_size=cfg.vocab_size
    )
    guided = median_step_seconds(step_fn(objective, student, tokens))
    result = {
        "student_only_s": alone,
        "distillation_s": guided,
        "ratio": guided / alone,
        "student_only_tokens_per_s": MICRO * SEQ / alone,
        "distillation_tokens_per_s": MICRO * SEQ / guided,
    }
    Path(args.out).write_text(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
