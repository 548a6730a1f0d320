"""On the GPU machine: DPO of a tiny Mistral hybrid (mamba1 from attention) in bf16 over NCCL,
the reference's log-probabilities computed before training (dpo.precompute_reference) against
the reference running in each step."""

import math

import numpy as np
import pytest

from tests.gpu.zephyr_runs import dpo

pytestmark = pytest.mark.gpu


def test_precomputed_reference_follows_the_reference_in_each_step(sft):
    beside = dpo(sft, "beside")
    precomputed = dpo(sft, "precomputed", "dpo.precompute_reference=true")
    assert beside[0]["dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert beside[-1]["reward_margin"] != 0  # the policy has moved
    for key in ("dpo", "reward_margin", "logp_chosen", "logp_rejected"):
        got, expected = ([r[key] for r in rs] for rs in (precomputed, beside))
        # bf16: the reference's log-probabilities from batches of other composition
        np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2, err_msg=key)
