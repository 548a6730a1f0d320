"""Worker: the training entry point with a NaN loss or NaN gradients at chosen steps.

Usage: train_poisoned.py KIND STEPS KEY=VALUE ... — STEPS are comma-separated step counts of
this process (1 = its first step). KIND "loss" makes those steps' loss NaN; "grad" puts a NaN
into their reduced gradients, the loss staying finite.
"""

import sys

import megatron_mamba.training.trainer as trainer
from megatron_mamba.train import main

KIND, STEPS = sys.argv[1], {int(s) for s in sys.argv[2].split(",")}
steps = 0
real_get_forward_backward_func = trainer.get_forward_backward_func
real_across = trainer._across_pipeline_and_replicas


def get_forward_backward_func():
    forward_backward = real_get_forward_backward_func()

    def poisoned(*args, model, **kwargs):
        global steps
        steps += 1
        losses = forward_backward(*args, model=model, **kwargs)
        if KIND == "grad" and steps in STEPS:
            model.buffers[0].grad_data[0] = float("nan")
        return losses

    return poisoned


def across(parts, device):
    reduced = real_across(parts, device)
    if KIND == "loss" and steps in STEPS:
        return {name: float("nan") for name in reduced}
    return reduced


trainer.get_forward_backward_func = get_forward_backward_func
trainer._across_pipeline_and_replicas = across
sys.exit(main(sys.argv[3:]))
