"""The LR schedule: linear warmup, cosine (or linear) decay to min_lr, then held at min_lr —
megatron-core's OptimizerParamScheduler, whose state is saved and restored with checkpoints —
and CALD's variant of the cosine ("cosine_floor", below)."""

from __future__ import annotations

import math

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_mamba.training.config import TrainConfig


class Scheduler(OptimizerParamScheduler):
    """megatron's scheduler with one more decay style, "cosine_floor": CALD's schedule, which
    is transformers' warmup and cosine to 0 over lr_decay_steps with every LR raised to at least
    min_lr (from the first step of warmup on), and min_lr afterwards. megatron's "cosine" goes
    from learning_rate to min_lr instead, higher all along the decay."""

    def get_lr(self, param_group: dict) -> float:
        if self.lr_decay_style != "cosine_floor":
            return super().get_lr(param_group)
        max_lr = param_group.get("max_lr", self.max_lr)
        min_lr = param_group.get("min_lr", self.min_lr)
        step, warmup, decay = self.num_steps, self.lr_warmup_steps, self.lr_decay_steps
        if step >= decay:
            return min_lr
        if step < warmup:
            factor = step / warmup
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (decay - warmup)))
        return max(max_lr * factor, min_lr)


def build_scheduler(optimizer, train: TrainConfig, total_steps: int) -> Scheduler:
    """Step 0 has LR 0 under warmup (min_lr under cosine_floor); `scheduler.step(1)` after each
    optimizer step. Weight decay
    is constant; parameter groups scale it by their `wd_mult` (0 for norms and biases)."""
    warmup = train.warmup(total_steps)
    decay = train.decay_steps(total_steps)
    # TrainConfig refuses a warmup not below lr_decay_steps. megatron needs decay > warmup, so
    # decay is raised here for a warmup as long as the run (which ends first) or a constant
    # schedule (which does not decay).
    decay = max(decay, warmup + 1)
    return Scheduler(
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
