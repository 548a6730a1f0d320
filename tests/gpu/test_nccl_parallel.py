"""On the GPU machine: the same worker over NCCL, 1 GPU and (where present) TP=2 on 2 GPUs."""

from pathlib import Path

import pytest
import torch

from tests.distributed.gpt_runs import assert_matches, run_gpt_step
from tests.distributed.launch import torchrun
from tests.distributed.test_model_parallel import _run as run_model_step

pytestmark = pytest.mark.gpu


def test_nccl_tp2_matches_one_gpu(tmp_path):
    ref = run_gpt_step(tmp_path, 1, 1, cpu=False)
    assert ref.backends == {"nccl"}
    if torch.cuda.device_count() < 2:
        pytest.skip("a second GPU is needed for TP=2")
    full_state = ref.out / "full_state.pt"
    for tp, pp in [(2, 1), (1, 2)]:
        run = run_gpt_step(tmp_path, tp, pp, full_state, cpu=False)
        assert run.backends == {"nccl"}
        assert_matches(ref, run, rtol=1e-4, atol=1e-5)


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))


@pytest.mark.parametrize("kind", ["gpt_neox_hybrid", "llama_hybrid"])
def test_nccl_hybrid_tp2_matches_one_gpu(tmp_path, kind):
    """Mamba layers on the fused kernels, split over 2 GPUs (with SP), against one GPU. The
    kernels multiply in TF32 inside Triton, hence 1e-3."""
    if torch.cuda.device_count() < 2:
        pytest.skip("a second GPU is needed for TP=2")
    (ref,), ref_grads, ref_out = run_model_step(tmp_path, kind, 1, 1, cpu=False)
    for sp in (False, True):
        last, grads, _ = run_model_step(
            tmp_path, kind, 2, 1, sp, full_state=ref_out / "full.pt", cpu=False
        )
        for rank in last:
            for got, expected in zip(rank["logits"], ref["logits"], strict=True):
                assert _relative(got, expected) <= 1e-3
        for name, grad in grads.items():
            assert _relative(grad, ref_grads[name]) <= 1e-3, name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nccl_vocab_parallel_logit_losses_match_torch(dtype):
    """The Triton kernels split over TP=2 (row statistics, all-gather, gradients), with padding
    on the last rank, against torch on the whole logits in float64."""
    if torch.cuda.device_count() < 2:
        pytest.skip("a second GPU is needed for TP=2")
    worker = Path(__file__).parents[1] / "distributed" / "workers" / "logit_losses_tp.py"
    out = torchrun(worker, 2, "5000", "5120", str(2**25), dtype, cpu=False)
    assert out.count(": ok") == 2
