"""train.cuda_graph=true around its capture (stood in on CPU by running the captured pass
eagerly: tests/distributed/workers/train_graph_standin.py): with two data-parallel replicas the
reduction after the replays gives the eager schedule's steps, and hybrid distillation's graph is
captured again at the switch, the warm-ups' layer loss not counted. (The capture itself:
tests/gpu/test_cuda_graph_gpu.py.)"""

from pathlib import Path

import numpy as np
import pytest

from tests.distributed.launch import launch
from tests.distributed.train_runs import records, run, save_initial, settings

STANDIN = Path(__file__).parent / "workers" / "train_graph_standin.py"
STEPS = {"train.max_steps": 8, "train.per_device_train_batch_size": 2}
STEPS |= {"train.gradient_accumulation_steps": 2}


def standin_run(tmp_path, items, name, nproc, **overrides) -> tuple[list[dict], str]:
    args = settings(tmp_path, items, name, **overrides)
    done = launch(STANDIN, nproc, *(f"{k}={v}" for k, v in args.items()))
    assert done.returncode == 0, done.stderr[-4000:]
    return records(tmp_path / name), done.stdout


def _same(got: list[dict], expected: list[dict], parts) -> None:
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]
    for part in parts:
        got_part, expected_part = ([r[part] for r in rs if part in r] for rs in (got, expected))
        np.testing.assert_allclose(got_part, expected_part, rtol=1e-6, err_msg=part)


def test_two_replicas_reduce_after_the_replays_as_the_schedule_does(tmp_path, items, initial):
    """Validation every three steps runs between the replays and changes none of them."""
    common = {"train.init_from": initial, **STEPS}
    common |= {"train.eval_interval": 3, "data.valid_path": items, "data.valid_windows": 4}
    eager = run(tmp_path, items, "eager", 2, **common)
    graphed, out = standin_run(tmp_path, items, "graphed", 2, **common)
    assert [r["step"] for r in eager if "valid_loss" in r] == [3, 6, 8]
    _same(graphed, eager, ("loss", "grad_norm", "valid_loss"))
    # each replica: one capture at step 3, two micro-batches replayed in each of steps 3-8
    assert out.count("captures=1 replays=12") == 2, out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return save_initial(path, {"preset": "tiny-gpt-neox", "model.vocab_size": 200})


def test_hybrid_distillation_captures_again_at_the_switch(tmp_path, items, initial, teacher):
    common = {"train.init_from": initial, **STEPS, "distill.teacher": teacher}
    common |= {"distill.alpha_layer_distill_loss": 15.0, "distill.alpha_logits_distill_loss": 1.0}
    common |= {"distill.layer_distill_until": 0.5, "train.save_at_end": False}
    eager = run(tmp_path, items, "eager", 1, **common)
    graphed, out = standin_run(tmp_path, items, "graphed", 1, **common)
    assert ["layer" in r for r in eager] == [True] * 4 + [False] * 4
    _same(graphed, eager, ("loss", "ce", "layer", "logits_kl", "grad_norm"))
    assert "captures=2 replays=12" in out, out
