"""The trainer end to end under torchrun (gloo): the loss falls, metrics and config are written,
and TP=2, data parallelism and gradient accumulation reproduce the single-process losses."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from tests.distributed.launch import REPO, torchrun

TRAIN = REPO / "megatron_mamba" / "train.py"
SAVE_INITIAL = Path(__file__).parent / "workers" / "save_initial.py"
ITEM = 33


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """64 items; item i counts up by 3 from 7·i (mod 200): learnable, and each item distinct."""
    prefix = tmp_path_factory.mktemp("data") / "items"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for i in range(64):
        builder.add_document((7 * i + 3 * np.arange(ITEM)) % 200, [ITEM])
    builder.finalize(f"{prefix}.idx")
    return prefix


MODEL = {"preset": "tiny-gpt-neox", "model.layer_pattern": "MA", "model.vocab_size": 200}


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """Whole initial weights, so that every layout starts from the same model."""
    path = tmp_path_factory.mktemp("init") / "initial.pt"
    torchrun(SAVE_INITIAL, 1, str(path), *(f"{k}={v}" for k, v in MODEL.items()))
    return path


def run(tmp_path, data, name, nproc=1, **overrides):
    settings = {
        **MODEL,
        "data.path": str(data),
        "data.item_length": ITEM,
        "train.mixed_precision": "no",
        "train.learning_rate": 3e-3,
        "train.warmup_steps": 2,
        "train.max_steps": 8,
        "train.per_device_train_batch_size": 4,
        "train.output_dir": str(tmp_path),
        "train.run_name": name,
        **overrides,
    }
    torchrun(TRAIN, nproc, *(f"{k}={v}" for k, v in settings.items()))
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def losses(records):
    return np.array([r["loss"] for r in records])


def test_training_reduces_the_loss_and_writes_its_record(tmp_path, data):
    records = run(tmp_path, data, "one", **{"train.max_steps": 12})
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[0]["lr"] == 0.0 and records[2]["lr"] == pytest.approx(3e-3)
    assert losses(records)[-1] < losses(records)[0] - 1.0
    saved = (tmp_path / "one" / "config.yaml").read_text()
    assert "layer_pattern: MA" in saved and "max_steps: 12" in saved


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, initial):
    return losses(run(tmp_path_factory.mktemp("ref"), data, "ref", **{"train.init_from": initial}))


@pytest.mark.parametrize(
    "nproc,overrides",
    [
        (2, {"parallel.tensor": 2}),
        (2, {"train.per_device_train_batch_size": 2}),  # 2 data-parallel replicas
        (1, {"train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 2}),
    ],
    ids=["tp2", "dp2", "accumulation"],
)
def test_layouts_reproduce_the_single_process_losses(
    tmp_path, data, initial, reference, nproc, overrides
):
    got = losses(run(tmp_path, data, "layout", nproc, **overrides, **{"train.init_from": initial}))
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


def test_non_finite_losses_stop_the_run_with_a_clear_error(tmp_path, data, initial):
    import torch

    poisoned = torch.load(initial, weights_only=True)
    poisoned["embedding.word_embeddings.weight"][:] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(poisoned, path)
    overrides = {"train.init_from": path, "train.max_bad_steps": 3}
    with pytest.raises(AssertionError, match="3 consecutive steps had a non-finite loss"):
        run(tmp_path, data, "nan", **overrides)
    assert not (tmp_path / "nan" / "metrics.jsonl").read_text()
