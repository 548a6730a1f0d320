"""The losses over a Pythia micro-batch's logits (8192 tokens × 50304, bf16), forward + backward.

Cross-entropy: torch's `F.cross_entropy` on fp32 logits (what transformers computes), megatron's
vocab-parallel cross-entropy, and ours (models/logit_losses.py). Distillation CE + KL (T=2):
the vocab-parallel path (fp32 logits with the padding masked, megatron's CE, our vocab-parallel
KL; what TP>1 runs) against ours in one pass. Time and peak memory above the logits.

    torchrun --nproc_per_node 1 benchmarks/logit_losses.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from benchmarks.common import median_step_seconds, peak_memory_gib
from megatron_mamba.distill.losses import logits_kl
from megatron_mamba.models.logit_losses import LocalLogitLosses
from megatron_mamba.models.vocab import without_padding
from megatron_mamba.runtime import init_runtime

TOKENS, VOCAB, TEMPERATURE = 8192, 50304, 2.0


def torch_ce(student, teacher, labels):
    return F.cross_entropy(student.float(), labels, reduction="none")


def megatron_ce(student, teacher, labels):
    return vocab_parallel_cross_entropy(student.float(), labels)


def our_ce(student, teacher, labels):
    return LocalLogitLosses.apply(student, None, labels, VOCAB, 1.0)[0]


def vocab_parallel_distillation(student, teacher, labels):
    s, t = without_padding(student, VOCAB), without_padding(teacher, VOCAB)
    kl = logits_kl(s, t, TEMPERATURE)
    return vocab_parallel_cross_entropy(s, labels) + kl


def our_distillation(student, teacher, labels):
    ce, kl = LocalLogitLosses.apply(student, teacher, labels, VOCAB, TEMPERATURE)
    return ce + kl


def main() -> None:
    init_runtime(seed=1)
    student = torch.randn(TOKENS, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
    student.requires_grad_()
    teacher = torch.randn(TOKENS, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
    labels = torch.randint(0, VOCAB, (TOKENS,), device="cuda")
    print("| losses | implementation | ms (fwd+bwd) | peak GiB above inputs |")
    print("|---|---|---|---|")
    for kind, implementations in {
        "CE": (torch_ce, megatron_ce, our_ce),
        "CE + KL": (vocab_parallel_distillation, our_distillation),
    }.items():
        for loss in implementations:

            def step(loss=loss):
                loss(student, teacher, labels).mean().backward()
                student.grad = None

            seconds = median_step_seconds(step)
            base = torch.cuda.memory_allocated() / 2**30
            peak = peak_memory_gib(step) - base
            print(f"| {kind} | {loss.__name__} | {seconds * 1e3:.2f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
