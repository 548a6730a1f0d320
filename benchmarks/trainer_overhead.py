"""The trainer's step against a bare loop on the same model, and its data-parallel scaling.

Both sides build the same bf16 model with megatron DDP and megatron's optimizer (fp32 master
weights, clipping). The bare loop feeds one pre-made batch from GPU memory and calls forward,
backward and the optimizer step; the trainer adds its data reading, pipeline schedule, loss
reduction, NaN guard and metrics. Tokens/s are medians after warmup.

    torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode bare --out $OUT/bare.json
    torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode trainer --out $OUT/t1.json
    torchrun --nproc_per_node 2 benchmarks/trainer_overhead.py --mode trainer --out $OUT/t2.json

BENCH_MICRO=8 sets micro-batch 8; BENCH_DISTRIBUTED_OPTIMIZER=1 the distributed optimizer;
BENCH_CUDA_GRAPH=1 trains with train.cuda_graph=true; BENCH_PRESET, BENCH_PATTERN and BENCH_SEQ
another model shape and sequence length (e.g. pythia-160m, AMAMAMAMAMAM, 1024); BENCH_TEACHER=1
trains by target-guided distillation (CE + 15 · layer loss) from an attention-only teacher of
the same shape (fresh weights; the cost of a step does not depend on them); BENCH_OVERRIDES more
config overrides, space-separated (e.g. "model.mamba.d_inner=5120 train.adam_kernel=one_launch").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WARMUP = 4
SEQ = int(os.environ.get("BENCH_SEQ", "2048"))
MICRO = int(os.environ.get("BENCH_MICRO", "4"))
ZERO1 = os.environ.get("BENCH_DISTRIBUTED_OPTIMIZER", "0") == "1"
GRAPH = os.environ.get("BENCH_CUDA_GRAPH", "0") == "1"
TEACHER = os.environ.get("BENCH_TEACHER", "0") == "1"
# Pythia-1b shape, half mamba1 (CUDA kernels)
PRESET = os.environ.get("BENCH_PRESET", "pythia-1b")
PATTERN = os.environ.get("BENCH_PATTERN", "AMAMAMAMAMAMAMAM")
OVERRIDES = os.environ.get("BENCH_OVERRIDES", "").split()


def run_config(data: Path, out: Path, steps: int, world: int, teacher: Path | None = None):
    from megatron_mamba.config_io import load
    from megatron_mamba.training.run_config import RunConfig

    overrides = {
        "preset": PRESET,
        "model.layer_pattern": PATTERN,
        "data.path": str(data),
        "data.item_length": SEQ + 1,
        "train.max_steps": steps,
        "train.per_device_train_batch_size": MICRO,
        "train.mixed_precision": "bf16",
        "train.output_dir": str(out),
        "train.run_name": f"bench{world}",
        "train.report_to": "[jsonl]",
        "train.save_at_end": False,
        "train.use_distributed_optimizer": ZERO1,
        "train.cuda_graph": GRAPH,
    }
    if teacher is not None:
        overrides |= {"distill.teacher": str(teacher), "distill.alpha_layer_distill_loss": 15.0}
    settings = [f"{k}={v}" for k, v in overrides.items()] + OVERRIDES
    return load(RunConfig, None, settings)


def write_random_items(prefix: Path, count: int, vocab: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    rng = np.random.default_rng(0)
    for _ in range(count):
        builder.add_document(rng.integers(0, vocab, SEQ + 1), [SEQ + 1])
    builder.finalize(f"{prefix}.idx")


def save_teacher(path: Path) -> None:
    """An attention-only model of the benchmark's shape, saved whole by a CPU process of its
    own (this one's runtime is the trainer's)."""
    repo = Path(__file__).resolve().parents[1]
    worker = repo / "tests" / "distributed" / "workers" / "save_initial.py"
    python_path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])
    # none of torchrun's rendezvous (its agent's store would take the worker for this rank):
    # init_runtime then sets up a world of one on a free port
    torchrun_vars = ("TORCHELASTIC", "GROUP_", "RANK", "LOCAL_", "WORLD_SIZE", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(torchrun_vars)}
    env |= {"PYTHONPATH": python_path, "CUDA_VISIBLE_DEVICES": ""}
    pattern = "model.layer_pattern=" + "A" * len(PATTERN)
    subprocess.run(
        [sys.executable, str(worker), str(path), f"preset={PRESET}", pattern],
        env=env,
        check=True,
    )


def trainer_tokens_per_s(steps: int) -> float:
    from megatron_mamba.training.metrics import read_metrics
    from megatron_mamba.training.trainer import train

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    shape = f"{PRESET}_{PATTERN}_seq{SEQ}_micro{MICRO}_gpus{world}_graph{int(GRAPH)}"
    shape += "_distill" if TEACHER else ""
    shape += "_" + "_".join(OVERRIDES).replace("/", "-") if OVERRIDES else ""
    root = Path(tempfile.gettempdir()) / "trainer_overhead" / shape
    data = root / "items"
    teacher = root.parent / f"teacher_{PRESET}_{len(PATTERN)}.pt"  # shared by graph or not
    ready = root / "ready"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        write_random_items(data, steps * MICRO * world, 50000)
        if TEACHER and not teacher.exists():
            save_teacher(teacher)
        ready.touch()
    while not ready.exists():
        time.sleep(0.5)
    run = run_config(data, root, steps, world, teacher if TEACHER else None)
    train(run)
    records = read_metrics(root / f"bench{world}" / "metrics.jsonl")
    return statistics.median(r["tokens_per_s"] for r in records[WARMUP:])


def bare_tokens_per_s(steps: int) -> float:
    from benchmarks.common import median_step_seconds
    from megatron_mamba.config import RunPrecision
    from megatron_mamba.models.build import build_model
    from megatron_mamba.runtime import init_runtime
    from megatron_mamba.training.ddp import wrap_ddp
    from megatron_mamba.training.optimizer import build_optimizer

    rt = init_runtime(seed=1)
    run = run_config(Path("unused"), Path("unused"), steps, 1)
    model = build_model(run.model_config(), run.parallel, RunPrecision("bf16")).to(rt.device)
    ddp = wrap_ddp(model)
    optimizer = build_optimizer(model, ddp, run)
    tokens = torch.randint(0, 50000, (MICRO, SEQ + 1), device=rt.device)

    def step():
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        loss = ddp(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean()
        loss.backward()
        ddp.finish_grad_sync()
        optimizer.step()

    return MICRO * SEQ / median_step_seconds(step, warmup=WARMUP, iters=steps - WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["trainer", "bare"], required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tokens_per_s = (trainer_tokens_per_s if args.mode == "trainer" else bare_tokens_per_s)(
        args.steps
    )
    if int(os.environ.get("RANK", "0")) == 0:
        result = {"mode": args.mode, "gpus": int(os.environ.get("WORLD_SIZE", "1"))}
        result["tokens_per_s"] = tokens_per_s
        Path(args.out).write_text(json.dumps(result) + "\n")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
