"""Worker: CE and KL over vocab-parallel logits at TP = world size, against torch on the whole
logits in float64 (computed on every rank), values and each rank's slice of the gradient.

Usage: logit_losses_tp.py VOCAB PADDED CHUNK [DTYPE] — PADDED columns split over the ranks, the
first VOCAB real (a rank may hold padding only); CHUNK elements per chunk of rows; the logits in
DTYPE (default float64, the torch path on CPU; on GPUs float32 or bfloat16 run the Triton
kernels, against the same float64 reference with matching tolerances). Fails (non-zero exit) on
any mismatch.
"""

import os
import sys

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps

from megatron_mamba.distill.losses import ce_and_logits_kl
from megatron_mamba.models import logit_losses
from megatron_mamba.models.logit_losses import cross_entropy
from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime

vocab, padded = int(sys.argv[1]), int(sys.argv[2])
logit_losses.CHUNK_ELEMENTS = int(sys.argv[3])
dtype = getattr(torch, sys.argv[4] if len(sys.argv) > 4 else "float64")
device = init_runtime(ParallelSizes(tensor=int(os.environ["WORLD_SIZE"])), seed=0).device
tolerance = {
    torch.float64: {},
    torch.float32: dict(rtol=1e-4, atol=1e-7),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-5),  # each loss's gradient rounded to bf16
}[dtype]
rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
g = torch.Generator().manual_seed(3)
student = torch.randn(3, 5, padded, dtype=torch.float64, generator=g) * 3
teacher = torch.randn(3, 5, padded, dtype=torch.float64, generator=g) * 3
labels = torch.randint(0, vocab, (3, 5), generator=g)
labels[1, 1] = -1
weights = torch.rand(2, 3, 5, dtype=torch.float64, generator=g)

local = padded // tp
columns = slice(rank * local, (rank + 1) * local)
if dtype != torch.float64:  # the reference sees the same rounded logits
    student, teacher = student.to(dtype).double(), teacher.to(dtype).double()


def here(x: torch.Tensor) -> torch.Tensor:
    return x.to(device, dtype if x.is_floating_point() else x.dtype)


ours_input = here(student[..., columns]).requires_grad_()
ce, kl = ce_and_logits_kl(ours_input, here(teacher[..., columns]), here(labels), vocab, 2.0)
((ce * here(weights[0])).sum() + (kl * here(weights[1])).sum()).backward()

full = student.clone().requires_grad_()
real_s, real_t = full[..., :vocab], teacher[..., :vocab]
ref_ce = F.cross_entropy(
    real_s.reshape(-1, vocab), labels.reshape(-1), reduction="none", ignore_index=-1
).view(3, 5)
ref_kl = F.kl_div(
    F.log_softmax(real_s / 2, -1), F.log_softmax(real_t / 2, -1), reduction="none", log_target=True
).sum(-1)
((ref_ce * weights[0]).sum() + (ref_kl * weights[1]).sum()).backward()


def check(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours.cpu().double(), reference, **tolerance)


check(ce, ref_ce)
check(kl, ref_kl)
check(ours_input.grad, full.grad[..., columns])
check(cross_entropy(here(student[..., columns]), here(labels), vocab), ref_ce)
print(f"rank {rank} of {tp}: ok")
shutdown_runtime()
