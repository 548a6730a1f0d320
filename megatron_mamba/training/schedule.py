"""The LR schedule: linear warmup, cosine (or linear) decay to min_lr, then held at min_lr —
megatron-core's OptimizerParamScheduler, whose state is saved and restored with checkpoints."""

from __future__ import annotations

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_mamba.config_io import ConfigError
from megatron_mamba.training.config import TrainConfig


def build_scheduler(optimizer, train: TrainConfig, total_steps: int) -> OptimizerParamScheduler:
    """Step 0 has LR 0 under warmup; `scheduler.step(1)` after each optimizer step. Weight decay
    is constant; parameter groups scale it by their `wd_mult` (0 for norms and biases)."""
    warmup = train.warmup(total_steps)
    decay = train.decay_steps(total_steps)
    decays = train.lr_decay_steps is not None and train.lr_scheduler_type != "constant"
    if decays and warmup >= decay:  # warmup_steps is checked by TrainConfig; a ratio only here
        raise ConfigError(
            f"train.warmup_ratio={train.warmup_ratio} of {total_steps} steps gives {warmup} "
            f"warmup steps, not below train.lr_decay_steps={decay}; the LR would fall from "
            "its peak to min_lr at once"
        )
    # megatron needs decay > warmup: here only a warmup as long as the run, which ends first,
    # or a constant schedule, which does not decay.
    decay = max(decay, warmup + 1)
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
