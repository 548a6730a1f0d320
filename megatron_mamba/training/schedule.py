"""The LR schedule: linear warmup, cosine (or linear) decay to min_lr, then held at min_lr —
megatron-core's OptimizerParamScheduler, whose state is saved and restored with checkpoints."""

from __future__ import annotations

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_mamba.training.config import TrainConfig


def build_scheduler(optimizer, train: TrainConfig, total_steps: int) -> OptimizerParamScheduler:
    """Step 0 has LR 0 under warmup; `scheduler.step(1)` after each optimizer step. Weight decay
    is constant; parameter groups scale it by their `wd_mult` (0 for norms and biases)."""
    warmup = train.warmup(total_steps)
    decay = max(train.decay_steps(total_steps), warmup + 1)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=train.learning_rate,
        min_lr=train.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style=train.lr_scheduler_type,
        start_wd=train.weight_decay,
        end_wd=train.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
    )
