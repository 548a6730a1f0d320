"""The tiny Zephyr stand-in's SFT hybrid and DPO runs of it on one GPU, shared by the DPO and
CUDA-graph tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.distributed.launch import REPO, run_script, torchrun
from tests.distributed.train_runs import TRAIN, records


def make_sft(out: Path) -> Path:
    """The stand-in's inputs and a hybrid of it (mamba1 from attention), as DPO starts from."""
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "zephyr" / "make_tiny.py"), str(out / "inputs")],
        check=True,
        capture_output=True,
    )
    run_script(
        REPO / "tools" / "convert_hf_to_native.py",
        out / "inputs" / "zephyr-hf",
        out / "sft",
        "--layer-pattern",
        "MAMAMAMA",
        "--mamba",
        "layout=attention",
        "--mamba",
        "init=attention",
    )
    return out


def dpo(sft: Path, name: str, *overrides: str) -> list[dict]:
    """Four bf16 DPO steps of two micro-batches from the SFT hybrid; the records per step."""
    args = [
        "--config",
        str(REPO / "examples" / "zephyr" / "dpo.yaml"),
        f"train.output_dir={sft}",
        f"train.run_name={name}",
        f"train.init_from={sft / 'sft'}",
        f"data.tokenizer={sft / 'inputs' / 'zephyr-hf'}",
        f"data.path={sft / 'inputs' / 'prefs.jsonl'}",
        "data.item_length=64",
        "data.max_prompt_length=32",
        "dpo.beta=0.5",
        "train.learning_rate=1e-4",
        "train.warmup_ratio=0",
        "train.per_device_train_batch_size=4",
        "train.global_batch_size=8",
        "train.max_steps=4",
        "train.checkpointing_steps=null",
        "train.save_at_end=false",
        "train.report_to=[jsonl]",
        *overrides,
    ]
    torchrun(TRAIN, 1, *args, cpu=False)
    return records(sft / name)
