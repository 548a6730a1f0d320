"""The trainer end to end under torchrun (gloo): the loss falls, metrics and config are written,
and TP=2, data parallelism and gradient accumulation reproduce the single-process losses."""

import subprocess
import sys

import numpy as np
import pytest

from tests.distributed.launch import REPO
from tests.distributed.train_runs import TRAIN, losses, run


def test_training_reduces_the_loss_and_writes_its_record(tmp_path, items):
    records = run(tmp_path, items, "one", **{"train.max_steps": 12})
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[0]["lr"] == 0.0 and records[2]["lr"] == pytest.approx(3e-3)
    assert losses(records)[-1] < losses(records)[0] - 1.0
    saved = (tmp_path / "one" / "config.yaml").read_text()
    assert "layer_pattern: MA" in saved and "max_steps: 12" in saved


@pytest.fixture(scope="module")
def reference(tmp_path_factory, items, initial):
    return losses(run(tmp_path_factory.mktemp("ref"), items, "ref", **{"train.init_from": initial}))


@pytest.mark.parametrize(
    "nproc,overrides",
    [
        (2, {"parallel.tensor": 2}),
        (2, {"train.per_device_train_batch_size": 2}),  # 2 data-parallel replicas
        (1, {"train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 2}),
        (1, {"train.recompute": "full"}),  # activations recomputed in backward: same numbers
    ],
    ids=["tp2", "dp2", "accumulation", "recompute"],
)
def test_layouts_reproduce_the_single_process_losses(
    tmp_path, items, initial, reference, nproc, overrides
):
    got = losses(run(tmp_path, items, "layout", nproc, **overrides, **{"train.init_from": initial}))
    np.testing.assert_allclose(got, reference, rtol=2e-5)


def test_bad_config_exits_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TRAIN), "preset=tiny-gpt-neox", "train.warmup_ratio=2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert proc.returncode == 2
    expected = "error: train: warmup_ratio=2.0 must be in [0, 1)"
    assert proc.stderr.strip().splitlines()[-1] == expected


def test_non_finite_losses_stop_the_run_with_a_clear_error(tmp_path, items, initial):
    import torch

    poisoned = torch.load(initial, weights_only=True)
    poisoned["embedding.word_embeddings.weight"][:] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(poisoned, path)
    overrides = {"train.init_from": path, "train.max_bad_steps": 3}
    with pytest.raises(AssertionError, match="3 consecutive steps had a non-finite loss"):
        run(tmp_path, items, "nan", **overrides)
    assert not (tmp_path / "nan" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_fails_clearly(tmp_path, items, precision):
    with pytest.raises(AssertionError, match=f"mixed_precision={precision} needs a GPU"):
        run(tmp_path, items, "mp", **{"train.mixed_precision": precision})


def test_distributed_optimizer_on_cpu_fails_clearly(tmp_path, items):
    with pytest.raises(AssertionError, match="use_distributed_optimizer=true needs GPUs"):
        run(tmp_path, items, "zero1", **{"train.use_distributed_optimizer": True})
