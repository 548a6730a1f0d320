"""TP=2, PP=2 and TP2×PP2 give the single-process loss and gradients on the same weights (gloo)."""

import pytest

from tests.distributed.gpt_runs import assert_matches, run_gpt_step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt")
    return run_gpt_step(tmp, 1, 1), tmp


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_parallel_matches_single_process(reference, tp, pp):
    ref, tmp = reference
    run = run_gpt_step(tmp, tp, pp, full_state=ref.out / "full_state.pt")
    assert run.backends == {"gloo"}
    assert len(run.losses) == tp, "each last-stage TP rank reports the losses"
    assert_matches(ref, run, rtol=1e-5, atol=1e-6)
