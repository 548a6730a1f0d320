"""Plain language modelling (cross-entropy) in the shape the trainer drives every objective:
`begin_step`, `forward_step` for megatron's schedule, `parts` of the loss this pipeline stage
holds, and their weighted `total`. The distillation objective (distill/objective.py) adds a
teacher."""

from __future__ import annotations

import torch

from megatron_mamba.data.batches import INPUT_MULTIPLE, TokenBatch
from megatron_mamba.training.target_mean import GlobalTargetMean


class LanguageModelling:
    micro_batch_factor = 1
    rows_per_item = 1
    input_multiple = INPUT_MULTIPLE  # the loss is a masked mean: padded inputs leave it as is
    detailed = False

    def __init__(self, device: torch.device):
        self.mean = GlobalTargetMean(device)

    def begin_step(
        self, step: int, loss_scale: float, accumulation: int, batch: TokenBatch | None = None
    ) -> None:
        """`batch`: this replica's whole step, whose loss-carrying targets the mean is over."""
        self.mean.begin_step(batch, accumulation)

    def forward_step(self, batch: TokenBatch, model):
        batch = batch.with_inputs_padded(self.input_multiple)
        per_token = model(batch.inputs, None, None, labels=batch.labels)

        def loss_func(output):
            loss = self.mean(batch, output)  # over the targets that carry loss (SFT: assistant)
            return loss, {"ce": loss.detach().clone()}  # the schedule divides `loss` in place

        return per_token, loss_func

    def parts(self, micro_batch_records: list[dict]) -> dict[str, float]:
        """The mean over the step's micro-batches (none on stages other than the last)."""
        count = max(len(micro_batch_records), 1)
        return {"ce": sum(float(r["ce"]) for r in micro_batch_records) / count}

    def total(self, parts: dict[str, float]) -> float:
        return parts["ce"]
