"""Distillation settings, with CALD's flag names."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from megatron_mamba.distill.losses import NORMALISATIONS, Normalisation


@dataclass
class DistillConfig:
    teacher: str | None = None
    """The attention-only teacher's weights (a checkpoint directory or a file of whole native
    tensors); the teacher is the student's config with every layer attention. Without it the run
    is plain (unguided) language modelling. The student's start is train.init_from or
    train.init_from_attention (often the teacher's weights)."""
    alpha_ce_loss: float = 1.0
    alpha_layer_distill_loss: float = 0.0
    """Weight of the layer loss: 0 unguided, 15 target-guided (CALD)."""
    alpha_logits_distill_loss: float = 0.0
    layer_distill_until: float | None = None
    """Hybrid: keep the layer loss for this fraction of the steps (CALD: 0.4), then 0."""
    layer_distill_until_step: int | None = None
    """Hybrid, as a step: keep the layer loss through this step, then 0 (CALD's published switch
    steps 4576 / 9120 / 18280; for 1p and 2p its 40th checkpoint, a little before 40%). Not with
    layer_distill_until."""
    distill_normalization: Normalisation = "layernorm"
    distill_skip_last: int = 1
    """Blocks at the end left out of the layer loss."""
    logits_temperature: float = 2.0
    logits_kl_reduction: Literal["target_mean", "batchmean"] = "target_mean"
    """How the logits KL is averaged: over the targets that carry loss ("target_mean", CALD's
    mean over tokens), or summed over every position of a row and averaged over the rows
    ("batchmean": torch's kl_div reduction, MambaInLlama's, which weighs KL by the row length)."""
    teacher_precision: Literal["same", "bf16", "fp16"] = "same"
    """The teacher's weights and compute: "same" as the student's (train.mixed_precision), or
    bf16/fp16 under an fp32 student, halving the frozen teacher's memory and time; its outputs
    are cast to the student's precision for the losses."""

    def __post_init__(self) -> None:
        for name in ("alpha_ce_loss", "alpha_layer_distill_loss", "alpha_logits_distill_loss"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):  # a NaN alpha is no less than 0
                raise ValueError(f"{name}={value} must be non-negative and finite")
        if self.distill_normalization not in NORMALISATIONS:
            raise ValueError(
                f"distill_normalization {self.distill_normalization!r} is unknown; expected one "
                f"of {', '.join(NORMALISATIONS)}"
            )
        if self.layer_distill_until is not None and not 0 <= self.layer_distill_until <= 1:
            raise ValueError(f"layer_distill_until={self.layer_distill_until} must be in [0, 1]")
        step = self.layer_distill_until_step
        if step is not None and (not isinstance(step, int) or step < 0):
            raise ValueError(f"layer_distill_until_step={step!r} must be a non-negative integer")
        if step is not None and self.layer_distill_until is not None:
            raise ValueError(
                f"layer_distill_until={self.layer_distill_until} and layer_distill_until_step="
                f"{step} are both set; keep one"
            )
        if self.distill_skip_last < 0:
            raise ValueError(f"distill_skip_last={self.distill_skip_last} must be >= 0")
        if self.logits_kl_reduction not in ("target_mean", "batchmean"):
            raise ValueError(
                f"logits_kl_reduction {self.logits_kl_reduction!r} is unknown; expected "
                "target_mean or batchmean"
            )
        if not (math.isfinite(self.logits_temperature) and self.logits_temperature > 0):
            raise ValueError(
                f"logits_temperature={self.logits_temperature} must be positive and finite"
            )
        if self.teacher_precision not in ("same", "bf16", "fp16"):
            raise ValueError(
                f"teacher_precision {self.teacher_precision!r} is unknown; expected same, bf16 "
                "or fp16"
            )
        guided = self.alpha_layer_distill_loss or self.alpha_logits_distill_loss
        if self.teacher is None and guided:
            raise ValueError(
                "alpha_layer_distill_loss / alpha_logits_distill_loss need distill.teacher (the "
                "attention model's weights)"
            )
        if self.teacher is None and self.alpha_ce_loss != 1.0:
            raise ValueError(
                f"alpha_ce_loss={self.alpha_ce_loss} weighs the cross-entropy against "
                "distillation losses, so it needs distill.teacher; without one the loss is plain "
                "cross-entropy (scale the learning rate instead)"
            )
