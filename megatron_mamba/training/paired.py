"""A trained model and a frozen one of the same layout (teacher, or DPO's reference) through
megatron's pipeline in one schedule.

Both are split identically over TP and PP, so stage i holds the same blocks of each. A stage
other than the last sends [trained; frozen] hidden states concatenated along the batch dimension
(the schedule is told the doubled micro-batch); the next stage hands each model its half. The
frozen model runs first, without gradients, so hooks may keep its activations for the trained
model's blocks to use. A frozen model in lower precision (a bf16 teacher of an fp32 student)
receives its half in its own precision and sends its output in the trained model's.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps


def forward_pair(trained, frozen, inputs, model, trained_kwargs=None, frozen_kwargs=None):
    """Returns (send, None) on a stage that is not the last, and (None, (trained_out,
    frozen_out)) on the last. `model` is the wrapped (DDP) `trained`."""
    if not ps.is_pipeline_first_stage():
        ours, theirs = trained.decoder.input_tensor.chunk(2, dim=1)
        trained.decoder.set_input_tensor(ours)
        frozen.decoder.set_input_tensor(theirs.to(frozen.config.params_dtype))
    with torch.no_grad():
        frozen_out = frozen(inputs, None, None, **(frozen_kwargs or {}))
    trained_out = model(inputs, None, None, **(trained_kwargs or {}))
    if not ps.is_pipeline_last_stage():
        return torch.cat([trained_out, frozen_out.to(trained_out.dtype)], dim=1), None
    return None, (trained_out, frozen_out)
