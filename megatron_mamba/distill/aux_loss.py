"""Losses computed on a pipeline stage other than the last, joined to its backward pass.

megatron backpropagates only the last stage's loss; earlier stages receive output gradients. A
layer loss computed on stage i is attached to that stage's activations: forward returns them
unchanged, backward adds d(scale · loss) — the scale being what the schedule applies to the main
loss (the fp16 loss scale over the number of micro-batches), as megatron's MoE auxiliary losses do.
"""

from __future__ import annotations

import torch


class AttachLoss(torch.autograd.Function):
    scale: float = 1.0

    @staticmethod
    def forward(ctx, activations: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.loss_meta = (loss.shape, loss.dtype, loss.device)
        return activations.view_as(activations)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.loss_meta
        return grad, torch.full(shape, AttachLoss.scale, dtype=dtype, device=device)


def attach_loss(activations: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    return AttachLoss.apply(activations, loss)


def set_loss_scale(scale: float) -> None:
    """Called once per step: the gradient each attached loss contributes per unit."""
    AttachLoss.scale = float(scale)
