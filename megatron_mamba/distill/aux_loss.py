"""Losses computed on a pipeline stage other than the last, joined to its backward pass.

megatron backpropagates only the last stage's loss; earlier stages receive output gradients. A
layer loss computed on stage i is taken with its gradient at once, and that gradient is attached
to the block's output: forward returns the output unchanged, backward adds the gradient. It is
taken already multiplied by the scale the schedule applies to the main loss (the fp16 loss scale
over the number of micro-batches), as megatron's MoE auxiliary losses are: kept in fp16 before
scaling it would underflow (a block's gradient is ~1e-7 per element, fp16's smallest normal
6e-5).

Under full activation recomputation a block's first forward runs without autograd and is run
again in backward; its gradient is then attached to the recomputed output (see objective.py).
"""

from __future__ import annotations

import torch

_scale = 1.0


class AttachGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, activations: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gradient)
        return activations.view_as(activations)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return grad + gradient, None


def attach_gradient(activations: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """`activations`, whose gradient in backward gains `gradient` (taken with `loss_scale()`
    folded in)."""
    return AttachGradient.apply(activations, gradient)


def set_loss_scale(scale: float) -> None:
    """Called once per step: the factor the schedule applies to the main loss."""
    global _scale
    _scale = float(scale)


def loss_scale() -> float:
    """This step's factor of the main loss, to fold into an attached gradient before it is cast
    to the activations' dtype."""
    return _scale
