"""Losses computed on a pipeline stage other than the last, joined to its backward pass.

megatron backpropagates only the last stage's loss; earlier stages receive output gradients. A
layer loss computed on stage i is taken with its gradient at once, and that gradient is attached
to the block's output: forward returns the output unchanged, backward adds scale × the layer
loss's gradient — the scale being what the schedule applies to the main loss (the fp16 loss
scale over the number of micro-batches), as megatron's MoE auxiliary losses do.

Under full activation recomputation a block's first forward runs without autograd and is run
again in backward; its gradient is then attached to the recomputed output (see objective.py).
"""

from __future__ import annotations

import torch


class AttachGradient(torch.autograd.Function):
    scale: float = 1.0

    @staticmethod
    def forward(ctx, activations: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gradient)
        return activations.view_as(activations)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return grad + gradient * AttachGradient.scale, None


def attach_gradient(activations: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """`activations`, whose gradient in backward gains `gradient` × the step's loss scale."""
    return AttachGradient.apply(activations, gradient)


def set_loss_scale(scale: float) -> None:
    """Called once per step: the factor the schedule applies to the main loss."""
    AttachGradient.scale = float(scale)
