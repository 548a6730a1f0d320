"""The training run's typed configuration, with the flag names of CALD / HF scripts kept.

Every field is documented where it is declared and checked in `__post_init__`; a bad value fails
with one sentence naming it. `megatron_mamba.config_io.load` reads these from YAML plus dotted
command-line overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SchedulerType = Literal["cosine", "linear", "constant"]
MixedPrecision = Literal["no", "fp16", "bf16"]
Trainable = Literal["all", "mamba"]


@dataclass
class TrainConfig:
    learning_rate: float = 1e-4
    """Peak LR, reached at the end of warmup."""
    min_lr: float = 0.0
    """LR held after lr_decay_steps (cosine/linear decay end here)."""
    lr_scheduler_type: SchedulerType = "cosine"
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps (used when warmup_steps is None)."""
    warmup_steps: int | None = None
    lr_decay_steps: int | None = None
    """Steps from 0 to the end of decay; None means the total number of steps."""
    weight_decay: float = 0.0
    weight_decay_mamba_only: bool = False
    """Decay only the Mamba mixers' weights (CALD); norms and biases are never decayed."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None or 0 disables clipping."""
    per_device_train_batch_size: int = 1
    """Micro-batch size per data-parallel rank."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per step; global batch = micro × accumulation × data-parallel size."""
    max_train_samples: int | None = None
    """Stop after this many samples (the data's end otherwise)."""
    num_train_epochs: int = 1
    """Passes over the (max_train_samples) data, in the same order each time."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (wins over samples and epochs)."""
    checkpointing_steps: float | None = None
    """Save every this many steps; a value below 1 is a fraction of the total (CALD's 0.01)."""
    save_at_end: bool = True
    """Save a checkpoint after the last step (off for benchmarks and smoke runs)."""
    keep_last_checkpoints: int = 2
    """Complete checkpoints kept in output_dir/run_name/checkpoints (older ones are removed)."""
    exit_interval: int | None = None
    """Save a checkpoint and stop after every this many steps (megatron's --exit-interval), for
    jobs on time-limited allocations; resume with resume_from_checkpoint=latest."""
    mixed_precision: MixedPrecision = "bf16"
    initial_loss_scale: float = 2.0**16
    """fp16 only: the dynamic loss scale's start; it halves after overflowing steps (which are
    skipped) and doubles after loss_scale_window clean ones."""
    loss_scale_window: int = 1000
    use_distributed_optimizer: bool = False
    """GPU only: shard the fp32 master weights and Adam moments over the data-parallel ranks
    (megatron's distributed optimizer, ZeRO-1): gradients are reduce-scattered instead of
    all-reduced, each rank updates its shard, the weights are all-gathered back. Its
    checkpoints keep the shards as laid out, so a resume needs the same TP/PP/DP (as every resume
    here does); weights alone load at any layout."""
    recompute: Literal["none", "full", "selective"] = "none"
    """Activation recomputation of the trained model: none, every layer ("full": activations
    of a block are recomputed in backward), or the attention core only ("selective")."""
    use_tf32: bool = True
    seed: int = 1234
    run_name: str = "run"
    output_dir: str = "runs"
    init_from: str | None = None
    """Weights to start from, loaded into any TP/PP layout: a checkpoint directory, or a torch
    file of whole native tensors (single-process names)."""
    init_from_attention: str | None = None
    """Weights of the attention-only version of this model (a checkpoint directory or a file of
    whole tensors): the student takes every tensor it shares with it, its Mamba mixers start
    fresh (CALD's student from Pythia)."""
    resume_from_checkpoint: str | None = None
    """A checkpoint directory, or "latest" for the newest in output_dir/run_name/checkpoints;
    needs the same parallel layout and global batch (init_from loads weights at any layout)."""
    trainable: Trainable = "all"
    """"mamba" trains only the Mamba mixers, everything else frozen (MambaInLlama's stage 1)."""
    report_to: tuple[str, ...] = ("jsonl",)
    """Metric sinks: any of console, jsonl, wandb (wandb offline unless WANDB_MODE says)."""
    log_every: int = 1
    eval_interval: int | None = None
    """Held-out loss and perplexity (data.valid_path) every this many steps and after the last;
    logged as valid_loss / valid_ppl with that step's record."""
    max_bad_steps: int = 5
    """Stop with an error after this many consecutive non-finite losses."""

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(
                f"min_lr={self.min_lr} must lie in [0, learning_rate={self.learning_rate}]"
            )
        if self.lr_scheduler_type not in ("cosine", "linear", "constant"):
            raise ValueError(
                f"lr_scheduler_type {self.lr_scheduler_type!r} is unknown; "
                "expected cosine, linear or constant"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.keep_last_checkpoints < 1:
            raise ValueError(f"keep_last_checkpoints={self.keep_last_checkpoints} must be >= 1")
        for name in ("exit_interval", "eval_interval"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("warmup_steps", "lr_decay_steps", "max_train_samples", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}={value!r} must be a non-negative integer")
        if self.checkpointing_steps is not None and self.checkpointing_steps <= 0:
            raise ValueError(
                f"checkpointing_steps={self.checkpointing_steps} must be positive (a step count, "
                "or a fraction of the run below 1)"
            )
        if not self.initial_loss_scale >= 1:
            raise ValueError(f"initial_loss_scale={self.initial_loss_scale} must be at least 1")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision {self.mixed_precision!r} is unknown; expected no, fp16 or bf16"
            )
        if self.trainable not in ("all", "mamba"):
            raise ValueError(f"trainable {self.trainable!r} is unknown; expected all or mamba")
        unknown = set(self.report_to) - {"console", "jsonl", "wandb"}
        if unknown:
            raise ValueError(f"report_to has unknown sink(s) {sorted(unknown)}")
        self.report_to = tuple(self.report_to)

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * total_steps)

    def decay_steps(self, total_steps: int) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else total_steps

    def checkpoint_interval(self, total_steps: int) -> int | None:
        if self.checkpointing_steps is None:
            return None
        if self.checkpointing_steps < 1:
            return max(1, round(self.checkpointing_steps * total_steps))
        return int(self.checkpointing_steps)
