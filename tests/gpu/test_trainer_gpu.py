"""On the GPU machine: the trainer under bf16 and fp16 (dynamic loss scaling) follows the fp32
run, and reports MFU."""

import numpy as np
import pytest

from tests.distributed.launch import REPO, launch, torchrun
from tests.distributed.train_runs import TRAIN, losses, records, settings, steps_and_values

pytestmark = pytest.mark.gpu


def gpu_run(tmp_path, items, initial, name, precision):
    """12 steps at `precision`: no, bf16, fp16, or bf16-pure (no fp32 master weights)."""
    args = settings(tmp_path, items, name, **{"train.init_from": initial})
    args["train.mixed_precision"], args["train.max_steps"] = precision.removesuffix("-pure"), 12
    args["train.fp32_master_weights"] = not precision.endswith("-pure")
    args["train.use_tf32"] = False
    torchrun(TRAIN, 1, *(f"{k}={v}" for k, v in args.items()), cpu=False)
    return records(tmp_path / name)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "bf16-pure"])
def test_mixed_precision_follows_the_fp32_run(tmp_path, items, initial, precision):
    reference = losses(gpu_run(tmp_path, items, initial, "fp32", "no"))
    recs = gpu_run(tmp_path, items, initial, precision, precision)
    got = losses(recs)
    assert got[-1] < got[0] - 1.0
    # 16-bit weights and activations: the trajectories agree to a few hundredths
    np.testing.assert_allclose(got, reference, atol=0.05)
    assert all(0 < r["mfu"] < 1 for r in recs)
    if precision == "fp16":  # nothing overflowed at 2^16, so no step was skipped
        assert [r["skipped"] for r in recs] == [0] * 12 and recs[-1]["loss_scale"] == 2.0**16


def test_fp16_overflow_skips_steps_and_lowers_the_scale(tmp_path, items, initial):
    """At 2^26 the backward pass overflows fp16: steps are skipped and, after megatron's
    hysteresis of 2, each skipped step halves the scale until the gradients fit; then the run
    trains on. The schedule does not move while steps are skipped. (Seen on an H200: 9 skipped
    steps, then updates with an occasional skip.)"""
    args = settings(tmp_path, items, "overflow", **{"train.init_from": initial})
    args.update({"train.mixed_precision": "fp16", "train.initial_loss_scale": 2.0**26})
    args["train.max_steps"] = 16  # all the data: 64 items, 4 per step
    torchrun(TRAIN, 1, *(f"{k}={v}" for k, v in args.items()), cpu=False)
    recs = records(tmp_path / "overflow")
    skipped = [r["skipped"] for r in recs]
    k = skipped.index(0)  # the first real update
    scales = [r["loss_scale"] for r in recs]
    later = skipped[k:]  # the scale now sits just below overflow: an occasional skip is normal
    assert k >= 2 and sum(later) <= len(later) // 2, (skipped, scales)
    assert [r["loss_scale"] for r in recs[:k]] == [2.0**26] + [2.0 ** (26 - i) for i in range(1, k)]
    assert all(r["lr"] == 0.0 for r in recs[: k + 1])
    assert recs[-1]["loss"] < recs[k]["loss"]


def test_fp16_overflow_at_the_minimum_scale_stops_the_run(tmp_path, items, initial):
    """Gradients that are NaN at every step: the scale falls to its minimum (1) — those skips are
    megatron's to handle — and from there each skip counts toward train.max_bad_steps."""
    args = settings(tmp_path, items, "stuck", **{"train.init_from": initial})
    args.update({"train.mixed_precision": "fp16", "train.initial_loss_scale": 4.0})
    args.update({"train.max_steps": 16, "train.max_bad_steps": 3})
    worker = REPO / "tests" / "distributed" / "workers" / "train_poisoned.py"
    steps = ",".join(str(s) for s in range(1, 17))
    done = launch(worker, 1, "grad", steps, *(f"{k}={v}" for k, v in args.items()), cpu=False)
    assert done.returncode != 0
    assert "fp16 gradients overflow at the minimum loss scale" in done.stderr
    assert "3 consecutive steps were skipped" in done.stderr, done.stderr[-3000:]


def _distributed_run(tmp_path, items, initial, name, gpus, **overrides):
    args = settings(tmp_path, items, name, **{"train.init_from": initial})
    args.update({"train.mixed_precision": "bf16", "train.max_steps": 8})
    args["train.per_device_train_batch_size"] = 4 // gpus  # global batch 4 at any DP size
    args.update(overrides)
    torchrun(TRAIN, gpus, *(f"{k}={v}" for k, v in args.items()), cpu=False)
    return records(tmp_path / name)


@pytest.mark.parametrize("gpus", [1, 2])
def test_distributed_optimizer_resumes_exactly(tmp_path, items, initial, gpus):
    """Its shards, saved in megatron's 'dp_reshardable' format, restore the run exactly."""
    import torch

    if torch.cuda.device_count() < gpus:
        pytest.skip(f"{gpus} GPUs are needed")
    sharded = {"train.use_distributed_optimizer": True}
    whole = _distributed_run(tmp_path, items, initial, "whole", gpus, **sharded)
    first = _distributed_run(
        tmp_path, items, initial, "cut", gpus, **sharded, **{"train.exit_interval": 3}
    )
    assert [r["step"] for r in first] == [1, 2, 3]
    resumed = _distributed_run(
        tmp_path,
        items,
        initial,
        "cut",
        gpus,
        **sharded,
        **{"train.resume_from_checkpoint": "latest"},
    )
    assert steps_and_values(resumed) == steps_and_values(whole)
    assert losses(whole)[-1] < losses(whole)[0] - 0.5


def test_a_distributed_optimizer_checkpoint_resumes_only_with_it(tmp_path, items, initial):
    """Its state lies as its buffers did, so the replicated optimizer (or another layout) cannot
    take it: refused in one line naming the setting."""
    sharded = {"train.use_distributed_optimizer": True, "train.exit_interval": 3}
    _distributed_run(tmp_path, items, initial, "cut", 1, **sharded)
    resume = {"train.resume_from_checkpoint": "latest"}
    with pytest.raises(AssertionError, match="saved with train.use_distributed_optimizer=True"):
        _distributed_run(tmp_path, items, initial, "cut", 1, **resume)


def test_distributed_optimizer_matches_the_replicated_one(tmp_path, items, initial):
    """Two data-parallel GPUs, bf16: sharding the master weights and moments (reduce-scatter,
    shard update, all-gather) trains like every rank holding them all (all-reduce)."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("two GPUs are needed for data parallelism")
    replicated = _distributed_run(tmp_path, items, initial, "replicated", 2)
    sharded = _distributed_run(
        tmp_path, items, initial, "sharded", 2, **{"train.use_distributed_optimizer": True}
    )
    np.testing.assert_allclose(losses(sharded), losses(replicated), rtol=1e-3)
