"""The losses over a Pythia micro-batch's logits (8192 tokens × 50304, bf16), forward + backward.

Cross-entropy: torch's `F.cross_entropy` on fp32 logits (what transformers computes), megatron's
vocab-parallel cross-entropy, and ours (models/logit_losses.py: the Triton kernel, and the
chunked torch version that runs off GPU). Distillation CE + KL (T=2): megatron's CE and torch's
KL on fp32 copies of the logits (an autograd graph) against ours. Time and peak memory above the
logits. Then ours in forward alone (losses and kept gradients): the Triton kernels against the
chunked torch version.

    torchrun --nproc_per_node 1 benchmarks/logit_losses.py
"""

from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from benchmarks.common import median_step_seconds, peak_memory_gib
from megatron_mamba.kernels import logit_losses as kernel
from megatron_mamba.models import logit_losses
from megatron_mamba.models.logit_losses import LogitLosses
from megatron_mamba.runtime import init_runtime

TOKENS, VOCAB, TEMPERATURE = 8192, 50304, 2.0


def torch_ce(student, teacher, labels):
    return F.cross_entropy(student.float(), labels, reduction="none")


def megatron_ce(student, teacher, labels):
    return vocab_parallel_cross_entropy(student.float(), labels)


def our_ce(student, teacher, labels):
    return LogitLosses.apply(student, None, labels, VOCAB, 1.0, None)[0]


def fp32_autograd_distillation(student, teacher, labels):
    s, t = student.float(), teacher.float()
    kl = F.kl_div(
        F.log_softmax(s / TEMPERATURE, -1),
        F.log_softmax(t / TEMPERATURE, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    return vocab_parallel_cross_entropy(s, labels) + kl


def our_distillation(student, teacher, labels):
    ce, kl = LogitLosses.apply(student, teacher, labels, VOCAB, TEMPERATURE, None)
    return ce + kl


def chunked(loss):
    """Ours with the Triton kernels switched off: the torch version that runs off GPU."""

    def run(*args):
        os.environ["MEGATRON_MAMBA_REFERENCE_KERNELS"] = "1"
        try:
            return loss(*args)
        finally:
            del os.environ["MEGATRON_MAMBA_REFERENCE_KERNELS"]

    run.__name__ = f"{loss.__name__} (chunked torch)"
    return run


def main() -> None:
    init_runtime(seed=1)
    student = torch.randn(TOKENS, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
    student.requires_grad_()
    teacher = torch.randn(TOKENS, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
    labels = torch.randint(0, VOCAB, (TOKENS,), device="cuda")
    print("| losses | implementation | ms (fwd+bwd) | peak GiB above inputs |")
    print("|---|---|---|---|")
    for kind, implementations in {
        "CE": (torch_ce, megatron_ce, chunked(our_ce), our_ce),
        "CE + KL": (fp32_autograd_distillation, chunked(our_distillation), our_distillation),
    }.items():
        for loss in implementations:

            def step(loss=loss):
                loss(student, teacher, labels).mean().backward()
                student.grad = None

            seconds = median_step_seconds(step)
            base = torch.cuda.memory_allocated() / 2**30
            peak = peak_memory_gib(step) - base
            print(f"| {kind} | {loss.__name__} | {seconds * 1e3:.2f} | {peak:.2f} |")
    print("\n| losses | forward with kept gradients | ms |")
    print("|---|---|---|")
    for kind, taught in {"CE": None, "CE + KL": teacher}.items():
        args = (student.detach(), taught, labels, VOCAB, TEMPERATURE, True)
        for name, forward in {
            "Triton kernels": partial(logit_losses.kernel_losses_and_gradients, kernel, *args),
            "chunked torch": partial(logit_losses.losses_and_gradients, *args),
        }.items():
            print(f"| {kind} | {name} | {median_step_seconds(forward) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
