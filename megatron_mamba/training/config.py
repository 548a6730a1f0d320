"""The training run's typed configuration, with the flag names of CALD / HF scripts kept.

Every field is documented where it is declared; its type and a Literal field's choices are
checked by `megatron_mamba.config_io.build`, ranges and combinations in `__post_init__`; a bad
value fails with one sentence naming it. `megatron_mamba.config_io.load` reads these from YAML
plus dotted command-line overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

SchedulerType = Literal["cosine", "cosine_floor", "linear", "constant"]
SCHEDULER_TYPES = ("cosine", "cosine_floor", "linear", "constant")
MixedPrecision = Literal["no", "fp16", "bf16"]
Trainable = Literal["all", "mamba"]


@dataclass
class TrainConfig:
    learning_rate: float = 1e-4
    """Peak LR, reached at the end of warmup (positive, finite)."""
    min_lr: float = 0.0
    """LR held after lr_decay_steps (cosine/linear decay end here); in [0, learning_rate]."""
    lr_scheduler_type: SchedulerType = "cosine"
    """After a linear warmup from 0: "cosine" from learning_rate down to min_lr (megatron's),
    "cosine_floor" transformers' cosine from learning_rate down to 0 with the LR never below
    min_lr, warmup included (CALD's retrain_mamba_distill.py), or "linear" down to min_lr;
    min_lr after lr_decay_steps. "constant" holds learning_rate after warmup (min_lr unused)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction in [0, 1) of the schedule's length (lr_decay_steps, or the total
    steps), rounded up; give this or warmup_steps, not both."""
    warmup_steps: int | None = None
    """Warmup in steps; below lr_decay_steps when both are set (else the LR would fall from its
    peak to min_lr at once)."""
    lr_decay_steps: int | None = None
    """Steps from 0 to the end of decay; None means the total number of steps."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (non-negative)."""
    weight_decay_mamba_only: bool = False
    """Decay only the Mamba mixers' parameters (CALD); norms and biases are never decayed,
    while A_log and D are, as in CALD (which spares only biases and norms)."""
    adam_beta1: float = 0.9
    """Adam's moment decays, each in [0, 1), as adam_beta2."""
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    """Added to Adam's denominator (positive)."""
    clip_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None or 0 disables clipping."""
    per_device_train_batch_size: int = 1
    """Micro-batch size per data-parallel rank."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per step; global batch = micro × accumulation × data-parallel size."""
    global_batch_size: int | None = None
    """Sequences per step over all data-parallel replicas; when set, the accumulation is derived
    from it (global / (micro × data-parallel size), which must divide it), so a recipe keeps
    its batch on any number of GPUs and any TP/PP. Not with gradient_accumulation_steps."""
    max_train_samples: int | None = None
    """Stop after this many samples (positive; the data's end otherwise)."""
    num_train_epochs: int = 1
    """Passes over the (max_train_samples) data, in the same order each time."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (positive); the data, with max_train_samples and
    num_train_epochs, must provide at least that many (raise num_train_epochs to cycle it)."""
    checkpointing_steps: float | None = None
    """Save every this many steps (a whole number); a value in (0, 1) is a fraction of the total
    (CALD's 0.01). None: no periodic saves."""
    save_at_end: bool = True
    """Save a checkpoint after the last step (off for benchmarks and smoke runs)."""
    keep_last_checkpoints: int = 2
    """Complete checkpoints kept in output_dir/run_name/checkpoints (older ones are removed)."""
    keep_checkpoint_steps: tuple[int, ...] = ()
    """Steps also saved, whatever checkpointing_steps says, and never pruned: e.g. CALD's hybrid
    switch step of a target-guided run, to resume it from there the seed's way."""
    exit_interval: int | None = None
    """Save a checkpoint and stop after every this many steps (megatron's --exit-interval), for
    jobs on time-limited allocations; resume with resume_from_checkpoint=latest (or give every
    job of the chain resume_from_checkpoint=auto)."""
    mixed_precision: MixedPrecision = "bf16"
    fp32_master_weights: bool = True
    """bf16 only. false: Adam updates the bf16 weights in place, its moments and the gradients
    (reduced and accumulated) in bf16 too, as TRL/alignment-handbook and MambaInLlama train: 8
    bytes of state per parameter instead of 18 and a shorter optimizer step, but an update
    below half the weight's bf16 spacing is lost, where fp32 master weights keep it: Adam moves
    each weight by about the LR, and a weight near 0.01 has spacing 6e-5, so at DPO's 5e-7
    nearly every update vanishes. Runs on CPU as well; not with use_distributed_optimizer."""
    adam_kernel: Literal["torch_fused", "one_launch"] = "one_launch"
    """How Adam updates on GPU: one Triton launch per parameter group (training/adamw.py;
    1.7× torch's fused kernel in bf16, 1.3× in fp32 on an H200), or torch's fused kernel; the
    same arithmetic and state, so checkpoints move between the two. Where one_launch cannot run
    (no GPU or Triton) torch's step runs."""
    initial_loss_scale: float = 2.0**16
    """fp16 only: the dynamic loss scale's start; it halves after overflowing steps (which are
    skipped) and doubles after loss_scale_window clean ones."""
    loss_scale_window: int = 1000
    """fp16 only: clean steps before the loss scale doubles (positive)."""
    use_distributed_optimizer: bool = False
    """GPU only: shard the fp32 master weights and Adam moments over the data-parallel ranks
    (megatron's distributed optimizer, ZeRO-1): gradients are reduce-scattered instead of
    all-reduced, each rank updates its shard, the weights are all-gathered back. Its
    checkpoints keep the shards as laid out, so a resume needs the same TP/PP/DP and this
    setting on (the replicated optimizer's checkpoints resume at any layout); weights alone load
    at any layout."""
    recompute: Literal["none", "full", "selective"] = "none"
    """Activation recomputation of the trained model: none, every layer ("full": activations
    of a block are recomputed in backward), or the attention core only ("selective")."""
    cuda_graph: bool = False
    """GPU only: replay each micro-batch's forward and backward from one CUDA graph, captured
    after two eager steps, so that the host launches one graph instead of every kernel (small
    models and short sequences are bound by those launches; training/cuda_graph.py). Needs
    pipeline and tensor parallel size 1, mixed_precision no or bf16, recompute none and no
    dropout; otherwise the run stops with one error naming what is missing. Distillation's graph
    is captured again when the hybrid schedule drops the layer loss. The graph keeps its
    activations' memory between steps."""
    use_tf32: bool = True
    """Let fp32 matmuls and convolutions on GPU use TF32 tensor cores."""
    seed: int = 1234
    """Seeds Python, NumPy and torch; in [0, 2**32) as NumPy requires."""
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
    """A checkpoint directory, or "latest" for the newest in output_dir/run_name/checkpoints,
    or "auto": the newest where there is one, else a fresh start (megatron's --load of the save
    directory); needs the same global batch, while the TP/PP/DP layout may change but with
    use_distributed_optimizer (init_from loads weights at any layout)."""
    overwrite_output_dir: bool = False
    """Let a run replace the checkpoints of an earlier run in its output_dir/run_name (and with
    them that run's metrics and config) where it does not resume one of them; without it such a
    run is refused before it starts (training/resume.py)."""
    resume_with_changes: bool = False
    """Let a run resume its own checkpoints though its objective, data or starting point
    differs from the config.yaml they were trained with (training/resume.DEFINING); without it
    such a resume is refused, naming the differences."""
    trainable: Trainable = "all"
    """"mamba" trains only the Mamba mixers, everything else frozen (MambaInLlama's stage 1)."""
    report_to: tuple[str, ...] = ("jsonl",)
    """Metric sinks: a list of any of console, jsonl, wandb (wandb offline unless WANDB_MODE
    says). [], null or "none" (transformers' spelling) log no metrics; warnings and errors still
    go to stderr."""
    log_every: int = 1
    """Log a record every this many steps (positive), and after the last."""
    eval_interval: int | None = None
    """Held-out loss and perplexity (data.valid_path) every this many steps and after the last;
    logged as valid_loss / valid_ppl with that step's record."""
    max_bad_steps: int = 5
    """Stop with an error after this many consecutive steps skipped for a non-finite loss or
    (fp32/bf16) gradients (positive)."""

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive and finite")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(
                f"min_lr={self.min_lr} must lie in [0, learning_rate={self.learning_rate}]"
            )
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay={self.weight_decay} must be non-negative and finite")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if not 0 < self.adam_eps < math.inf:
            raise ValueError(f"adam_eps={self.adam_eps} must be positive and finite")
        if self.clip_grad_norm is not None and not 0 <= self.clip_grad_norm < math.inf:
            raise ValueError(
                f"clip_grad_norm={self.clip_grad_norm} must be non-negative and finite "
                "(0 or null disables clipping)"
            )
        if self.lr_scheduler_type not in SCHEDULER_TYPES:
            raise ValueError(
                f"lr_scheduler_type {self.lr_scheduler_type!r} is unknown; expected one of "
                f"{', '.join(SCHEDULER_TYPES)}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "log_every",
            "max_bad_steps",
            "loss_scale_window",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.keep_checkpoint_steps = tuple(self.keep_checkpoint_steps)
        for step in self.keep_checkpoint_steps:
            if not isinstance(step, int) or step < 1:
                raise ValueError(f"keep_checkpoint_steps holds {step!r}; expected steps >= 1")
        if self.keep_last_checkpoints < 1:
            raise ValueError(f"keep_last_checkpoints={self.keep_last_checkpoints} must be >= 1")
        if self.global_batch_size is not None and self.gradient_accumulation_steps != 1:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} and gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps} are both set; keep one (the accumulation "
                "follows from the global batch)"
            )
        for name in (
            "global_batch_size",
            "exit_interval",
            "eval_interval",
            "lr_decay_steps",
            "max_train_samples",
            "max_steps",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive integer")
        steps = self.warmup_steps
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            raise ValueError(f"warmup_steps={steps!r} must be a non-negative integer")
        if steps is not None and self.warmup_ratio:
            raise ValueError(
                f"warmup_steps={steps} and warmup_ratio={self.warmup_ratio} are both set; keep "
                "one (set the other to null / 0)"
            )
        decay = self.lr_decay_steps
        decays = self.lr_scheduler_type != "constant"
        if steps is not None and decay is not None and decays and steps >= decay:
            raise ValueError(
                f"warmup_steps={steps} must be below lr_decay_steps={decay} (both count "
                "from step 0; the LR would fall from its peak to min_lr at once)"
            )
        if self.warmup_ratio and decay is not None and decays and self.warmup(decay) >= decay:
            raise ValueError(
                f"warmup_ratio={self.warmup_ratio} of lr_decay_steps={decay} gives "
                f"{self.warmup(decay)} warmup steps, not below it (rounded up); the LR would "
                "fall from its peak to min_lr at once"
            )
        every = self.checkpointing_steps
        if every is not None and not (0 < every < 1 or (1 <= every < math.inf and every % 1 == 0)):
            raise ValueError(
                f"checkpointing_steps={every} must be a whole number of steps (>= 1) or a "
                "fraction of the run in (0, 1)"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**32)")
        if not 1 <= self.initial_loss_scale < math.inf:
            raise ValueError(
                f"initial_loss_scale={self.initial_loss_scale} must be finite and at least 1"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision {self.mixed_precision!r} is unknown; expected no, fp16 or bf16"
            )
        if not self.fp32_master_weights and self.mixed_precision != "bf16":
            raise ValueError(
                f"fp32_master_weights=false needs mixed_precision=bf16, not "
                f"{self.mixed_precision} (fp16 scales its loss against fp32 master weights; "
                "no already trains fp32 weights)"
            )
        if not self.fp32_master_weights and self.use_distributed_optimizer:
            raise ValueError(
                "fp32_master_weights=false cannot be combined with use_distributed_optimizer=true "
                "(megatron's distributed optimizer shards fp32 master weights)"
            )
        if self.trainable not in ("all", "mamba"):
            raise ValueError(f"trainable {self.trainable!r} is unknown; expected all or mamba")
        if self.report_to is None or tuple(self.report_to) == ("none",):
            self.report_to = ()
        unknown = set(self.report_to) - {"console", "jsonl", "wandb"}
        if unknown:
            raise ValueError(
                f"report_to has unknown sink(s) {sorted(unknown)}; expected a list of console, "
                "jsonl and/or wandb, e.g. [console, jsonl] ([] for none)"
            )
        self.report_to = tuple(self.report_to)
        if not self.run_name or self.run_name in (".", "..") or set(self.run_name) & {"/", "\\"}:
            raise ValueError(
                f"run_name={self.run_name!r} must be a plain folder name (no / or \\): the run "
                "writes output_dir/run_name"
            )
        if self.init_from and self.init_from_attention:
            raise ValueError(
                f"init_from={self.init_from} and init_from_attention={self.init_from_attention} "
                "are both set; keep one (e.g. init_from_attention=null): init_from gives every "
                "weight of the model, which init_from_attention would then overwrite with the "
                "attention model's shared ones (embeddings, norms, MLPs)"
            )

    def warmup(self, total_steps: int) -> int:
        """Warmup steps. A ratio is of the schedule's length, as transformers' get_scheduler
        takes it (CALD passes lr_decay_steps as that length), rounded up so that a small one
        still warms up (the round drops float noise: 0.29 × 100 is 28.999999999999996)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return math.ceil(round(self.warmup_ratio * self.decay_steps(total_steps), 9))

    def accumulation(self, data_parallel: int) -> int:
        """Micro-batches per step on each data-parallel replica."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        per_step = self.per_device_train_batch_size * data_parallel
        if self.global_batch_size % per_step:
            from megatron_mamba.config_io import ConfigError

            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"per_device_train_batch_size × data-parallel size = "
                f"{self.per_device_train_batch_size} × {data_parallel}"
            )
        return self.global_batch_size // per_step

    def decay_steps(self, total_steps: int) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else total_steps

    def checkpoint_interval(self, total_steps: int) -> int | None:
        if self.checkpointing_steps is None:
            return None
        if self.checkpointing_steps < 1:  # truncated, as CALD does: its 40% checkpoint of a
            # 22880-step run is at step 40 · int(228.8) = 9120
            return max(1, int(self.checkpointing_steps * total_steps))
        return int(self.checkpointing_steps)
