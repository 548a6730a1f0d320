"""Steps whose update must not be applied, and when to give up.

megatron's optimizer checks the gradients only under fp16: an overflow skips the step and lowers
the loss scale. In fp32 and bf16 a NaN or inf gradient under a finite loss would go into the
weights, so the reduced gradient buffers are checked before the optimizer step. A skipped step
is reported; after `limit` in a row the run stops (fp16 overflows count only once the loss scale
is at its minimum, where lowering it cannot help any more).
"""

from __future__ import annotations

import math
import sys

import torch


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many consecutive non-finite losses)."""


@torch.no_grad()
def all_finite(tensors, device) -> bool:
    """Whether every element of `tensors` is finite on every rank (so that all ranks decide
    alike): NaN shows in a tensor's min and max, ±inf in one of them; one all-reduce."""
    bad = torch.zeros(1, device=device)
    for t in tensors:
        if t.numel():
            bad += (~torch.isfinite(torch.stack(torch.aminmax(t)))).sum().to(bad)
    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return not bad.item()


def why_skip(loss: float, ddp, check_grads: bool, device) -> str | None:
    """Why this step's update must not be applied (before the optimizer step), or None."""
    if not math.isfinite(loss):
        return f"a non-finite loss ({loss})"
    buffers = ddp.buffers + ddp.expert_parallel_buffers
    if check_grads and not all_finite((b.grad_data for b in buffers), device):
        return "non-finite gradients under a finite loss"
    return None


class BadSteps:
    """Consecutive steps not applied: each one warned about on rank 0, `limit` in a row an
    error naming the checkpoint the run leaves."""

    def __init__(self, limit: int, is_main: bool):
        self.limit, self.is_main, self.count = limit, is_main, 0

    def applied(self) -> None:
        self.count = 0

    def skipped(self, step: int, why: str, latest_checkpoint) -> None:
        self.count += 1
        if self.is_main:
            print(
                f"warning: step {step} skipped, its update not applied: {why} ({self.count} in "
                f"a row; train.max_bad_steps={self.limit})",
                file=sys.stderr,
                flush=True,
            )
        if self.count >= self.limit:
            kept = (
                f"the latest checkpoint is {latest_checkpoint}"
                if latest_checkpoint
                else "this run saved none"
            )
            raise TrainingError(
                f"{self.count} consecutive steps were skipped (step {step}: {why}); none of them "
                f"was applied, {kept}"
            )
