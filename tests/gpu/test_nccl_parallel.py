"""On the GPU machine: the same worker over NCCL, 1 GPU and (where present) TP=2 on 2 GPUs."""

import pytest
import torch

from tests.distributed.gpt_runs import assert_matches, run_gpt_step

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
