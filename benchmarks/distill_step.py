"""A distillation step against a student-only step on the same student, bf16, one GPU.

CALD's setting: Pythia-1b shape, every layer a mamba1 mixer (d_inner 5120, dt_rank 160), the
attention teacher frozen; micro-batch 4 × 2048 tokens. Both sides run megatron's schedule on
the same objective code the trainer uses (forward + backward, no optimizer step): student-only
is cross-entropy; distillation adds the teacher's forward, CE + 15 · layer loss + 1 · logits KL.

Then the whole training step (distillation, megatron DDP, clipping and the trainer's optimizer
with fp32 master weights, its Adam in one launch that also writes the bf16 weights) against
CALD's way of training the same objective in the same process: transformers' models under
torch.autocast with fp32 weights, plain PyTorch loss, clipping and AdamW
(benchmarks/cald_distill.py). With `--rounds N`, ours also takes turns for N rounds with the
weight gradients left to autograd and DDP's hook (MEGATRON_MAMBA_WGRAD_INTO_MAIN_GRAD=0), against
their product added straight into DDP's buffer (parallel/weight_grad.py, the default).

    torchrun --nproc_per_node 1 benchmarks/distill_step.py --out $OUT/distill_step.json

`--graphs` also times ours with `train.cuda_graph=true`'s forward + backward (training/
cuda_graph.py); `--profile ROWS` also profiles one whole training step of each side
(benchmarks/profiling.py), and the host's Python time in ours' optimizer step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path
from unittest import mock

import torch
from megatron.core.optimizer import OptimizerConfig
from megatron.core.pipeline_parallel import get_forward_backward_func

from benchmarks.cald_distill import cald_distill_step
from benchmarks.common import (
    interleaved_speedups,
    median_step_seconds,
    peak_memory_gib,
    print_speedups,
)
from benchmarks.profiling import host_profiled, profile_step
from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.data.batches import TokenBatch
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.cuda_graph import GraphedForwardBackward, leave_the_default_stream
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.objective import LanguageModelling
from megatron_mamba.training.optimizer import megatron_optimizer

SEQ, MICRO = 2048, 4
CALD_MAMBA1 = {"layout": "classic", "d_inner": 5120, "dt_rank": 160, "d_state": 16}


def step_fn(objective, student, tokens, optimizer=None, schedule=None):
    schedule = schedule or get_forward_backward_func()

    def step():
        if optimizer is not None:
            student.zero_grad_buffer()
            optimizer.zero_grad()
        objective.begin_step(1, 1.0, 1)
        schedule(
            forward_step_func=lambda batches, model: objective.forward_step(next(batches), model),
            data_iterator=iter([tokens]),
            model=student,
            num_microbatches=1,
            seq_length=SEQ,
            micro_batch_size=MICRO * objective.micro_batch_factor,
        )
        if optimizer is None:
            student.zero_grad(set_to_none=True)
        else:
            optimizer.step()

    return step


def _without_wgrad_path(step):
    def unfused_step():  # the linears read the switch at each forward
        with mock.patch.dict(os.environ, {"MEGATRON_MAMBA_WGRAD_INTO_MAIN_GRAD": "0"}):
            step()

    return unfused_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="then this many interleaved rounds with and without the weight-gradient path",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="also profile one whole training step of each side, printing this many rows",
    )
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="also ours with train.cuda_graph=true (forward + backward replayed from a graph)",
    )
    args = parser.parse_args()
    init_runtime(seed=1)
    if args.graphs:  # as the trainer does: DDP set up on the stream graphs are captured on
        leave_the_default_stream()
    bf16 = RunPrecision("bf16")
    cfg = preset("pythia-1b", layer_pattern="M" * 16, mamba=CALD_MAMBA1)
    student = build_model(cfg, ParallelConfig(), bf16, cpu_initialization=False).cuda()
    teacher = build_model(preset("pythia-1b"), ParallelConfig(), bf16, cpu_initialization=False)
    teacher.cuda().eval().requires_grad_(False)
    tokens = TokenBatch(torch.randint(0, cfg.vocab_size, (MICRO, SEQ + 1), device="cuda"))

    alone = median_step_seconds(step_fn(LanguageModelling(torch.device("cuda")), student, tokens))
    distill = DistillConfig(
        teacher="in memory", alpha_layer_distill_loss=15.0, alpha_logits_distill_loss=1.0
    )
    objective = Distillation(
        student, teacher, distill, cfg.num_layers, total_steps=1, vocab_size=cfg.vocab_size
    )
    guided = median_step_seconds(step_fn(objective, student, tokens))

    ddp = wrap_ddp(student)
    optimizer = megatron_optimizer(  # as the trainer builds it (train.adam_kernel=one_launch)
        ddp,
        OptimizerConfig(lr=1e-5, bf16=True, params_dtype=torch.bfloat16, clip_grad=1.0),
        one_launch_adam=True,
    )
    training_step = step_fn(objective, ddp, tokens, optimizer)
    ours_full, ours_memory = median_step_seconds(training_step), peak_memory_gib(training_step)
    profiles = {}
    if args.profile:
        profiles["ours"] = profile_step("ours", training_step, args.profile)
    graphed_full = None
    if args.graphs:
        graphed = GraphedForwardBackward(get_forward_backward_func(), ddp, objective=objective)
        graphed_step = step_fn(objective, ddp, tokens, optimizer, schedule=graphed)
        graphed_full = median_step_seconds(graphed_step)
        if args.profile:
            profiles["ours, graphed"] = profile_step(
                "ours, graphed", graphed_step, args.profile, by_shape=False
            )
            with host_profiled(optimizer, "step", args.profile):
                graphed_step()
        del graphed, graphed_step
    wgrad = None
    if args.rounds:
        wgrad = interleaved_speedups(
            {
                "through autograd": _without_wgrad_path(training_step),
                "into main_grad": training_step,
            },
            args.rounds,
        )
        print_speedups(wgrad, f"weight gradients, {args.rounds} rounds")
    del ddp, optimizer, objective, training_step, student, teacher
    gc.collect()
    torch.cuda.empty_cache()
    _, _, cald_step = cald_distill_step(cfg, tokens.tokens)
    cald_full, cald_memory = median_step_seconds(cald_step), peak_memory_gib(cald_step)
    if args.profile:
        profiles["cald"] = profile_step("CALD's way", cald_step, args.profile)
    result = {
        "student_only_s": alone,
        "distillation_s": guided,
        "ratio": guided / alone,
        "student_only_tokens_per_s": MICRO * SEQ / alone,
        "distillation_tokens_per_s": MICRO * SEQ / guided,
        "training_step_s": {"ours": ours_full, "cald": cald_full},
        "training_tokens_per_s": {"ours": MICRO * SEQ / ours_full, "cald": MICRO * SEQ / cald_full},
        "peak_gib": {"ours": ours_memory, "cald": cald_memory},
        "speedup_over_cald": cald_full / ours_full,
        "graphed_step_s": graphed_full,
        "graphed_speedup_over_cald": cald_full / graphed_full if graphed_full else None,
        "weight_gradient_path": wgrad,
        "profiles": profiles or None,
    }
    Path(args.out).write_text(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
