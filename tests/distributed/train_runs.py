"""Trainer runs under torchrun (gloo) on a tiny learnable dataset, read back from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from tests.distributed.launch import REPO, torchrun

TRAIN = REPO / "megatron_mamba" / "train.py"
SAVE_INITIAL = Path(__file__).parent / "workers" / "save_initial.py"
ITEM = 33
MODEL = {"preset": "tiny-gpt-neox", "model.layer_pattern": "MA", "model.vocab_size": 200}


def write_items(prefix: Path, count: int = 64) -> Path:
    """`count` items; item i counts up by 3 from 7·i (mod 200): learnable, each item distinct."""
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for i in range(count):
        builder.add_document((7 * i + 3 * np.arange(ITEM)) % 200, [ITEM])
    builder.finalize(f"{prefix}.idx")
    return prefix


def save_initial(path: Path, model: dict | None = None) -> Path:
    """Whole initial weights, so that every layout starts from the same model."""
    settings = model or MODEL
    torchrun(SAVE_INITIAL, 1, str(path), *(f"{k}={v}" for k, v in settings.items()))
    return path


def settings(tmp_path: Path, data: Path, name: str, **overrides) -> dict:
    return {
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


def run(
    tmp_path: Path, data: Path, name: str, nproc: int = 1, script=TRAIN, script_args=(), **overrides
):
    """Train; the run's records, one per step, as logged to metrics.jsonl."""
    args = settings(tmp_path, data, name, **overrides)
    torchrun(script, nproc, *script_args, *(f"{k}={v}" for k, v in args.items()))
    return records(tmp_path / name)


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def steps_and_values(records: list[dict]) -> list[tuple]:
    """What an exactly resumed run must reproduce, step by step."""
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in records]


def losses(records: list[dict]) -> np.ndarray:
    return np.array([r["loss"] for r in records])
