"""Model-parallel distillation against one device, end to end through the user-facing tools.

1. A random transformers GPTNeoX of a preset's shape (Pythia-410m by default) is saved, with
   random-token .bin/.idx data in the pre-shuffled Pile's layout.
2. tools/convert_hf_to_native.py imports it twice: as the attention teacher, and as the student
   with half its layers mamba1 and half mamba2 (alternating, initialised from attention).
3. The same target-guided run (CE + 15 × layer loss) trains at TP×PP over N processes and at
   TP=1/PP=1 on one: same data order, global batch and seed (data-parallel size 1 in both).
4. Per-step loss and gradient norm are compared; tokens/s per device is reported.
5. tools/convert_native_to_hf.py exports the parallel run's student; transformers loads it and
   its logits are compared with the native checkpoint's (and with the one-device run's).

    python benchmarks/parallel_distill.py OUT [--gpus 4] [--preset pythia-410m] [--steps 50]
    python benchmarks/parallel_distill.py OUT --cpu --preset tiny-gpt-neox --steps 4  # gloo

Writes OUT/report.json; exits 1 when a comparison exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from megatron_mamba.models.presets import preset

ROOT = Path(__file__).resolve().parents[1]
SEQ_CPU, SEQ_GPU = 64, 2048


def _run(*command, env: dict | None = None) -> None:
    command = [str(part) for part in command]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, **(env or {})})


def make_inputs(out: Path, preset_name: str, items: int, item_length: int) -> None:
    """A random HF model of the preset's shape, and random tokens in the Pile's item layout."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import AutoModelForCausalLM

    from megatron_mamba.convert.exporter import hf_config_for

    model = preset(preset_name)
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(hf_config_for(model, torch.float32))
    hf_model.save_pretrained(out / "hf")
    builder = IndexedDatasetBuilder(str(out / "tokens.bin"), dtype=np.uint16)
    rng = np.random.default_rng(0)
    for _ in range(items):
        builder.add_document(rng.integers(0, model.vocab_size, item_length), [item_length])
    builder.finalize(str(out / "tokens.idx"))


def train(out: Path, name: str, nproc: int, tp: int, pp: int, args) -> list[dict]:
    """The target-guided run at TP×PP over `nproc` processes; its per-step records."""
    from megatron_mamba.training.metrics import read_metrics

    settings = {
        "train.output_dir": out,
        "train.run_name": name,
        "train.init_from": out / "student",
        "distill.teacher": out / "teacher",
        "distill.alpha_layer_distill_loss": 15,
        "parallel.tensor": tp,
        "parallel.pipeline": pp,
        "data.path": out / "tokens",
        "data.kind": "pythia",
        "data.item_length": args.seq + 1,
        "train.max_steps": args.steps,
        "train.per_device_train_batch_size": args.micro,
        "train.gradient_accumulation_steps": args.accumulation,
        "train.mixed_precision": "no" if args.cpu else "bf16",
        "train.learning_rate": 3e-4,
        "train.min_lr": 3e-5,
        "train.warmup_ratio": 0.1,
        "train.weight_decay": 0.1,
        "train.weight_decay_mamba_only": "true",
        "train.report_to": "[jsonl,console]",
        "train.log_every": 1,
    }
    env = {"OMP_NUM_THREADS": "1"}
    if not args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(nproc)))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    overrides = [f"{key}={value}" for key, value in settings.items()]
    _run(sys.executable, *launcher, "-m", "megatron_mamba.train", *overrides, env=env)
    return read_metrics(out / name / "metrics.jsonl")


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))


def native_logits(checkpoint: Path, tokens: torch.Tensor) -> torch.Tensor:
    """The checkpoint's fp32 logits at TP=1/PP=1 in this process (loaded at another layout than
    it was written in)."""
    from megatron_mamba.config import ParallelConfig
    from megatron_mamba.models.build import build_model
    from megatron_mamba.runtime import ParallelSizes, init_runtime
    from megatron_mamba.training.checkpoint import find_checkpoint, load_weights, read_model_config

    rt = init_runtime(ParallelSizes(1, 1), seed=0)
    step = find_checkpoint(checkpoint, checkpoint)
    config = read_model_config(step)
    model = build_model(config, ParallelConfig()).to(rt.device).eval()
    load_weights(step, model)
    with torch.no_grad():
        logits = model(tokens.to(rt.device), None, None)
    return logits[..., : config.vocab_size].float().cpu()


def hf_logits(directory: Path, tokens: torch.Tensor, device: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes)

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        return model(tokens.to(device)).logits.float().cpu()


def compare_runs(parallel: list[dict], single: list[dict], names: tuple[str, ...]) -> dict:
    worst = {}
    for name in names:
        pairs = [(p[name], s[name]) for p, s in zip(parallel, single, strict=True) if name in p]
        worst[name] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
    return worst


def _median_rate(records: list[dict], skip: int) -> float:
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return statistics.median(rates[skip:] or rates)


def _write(out: Path, report: dict) -> None:
    """The report so far (rewritten after each phase, so that a cut run leaves its results)."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="pythia-410m")
    parser.add_argument("--gpus", type=int, default=4, help="processes of the parallel run")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--cpu", action="store_true", help="gloo processes, fp32, short items")
    parser.add_argument(
        "--skip-single", action="store_true", help="no one-device run (nor its comparisons)"
    )
    parser.add_argument("--loss-rtol", type=float, default=None)
    parser.add_argument("--grad-rtol", type=float, default=None)
    parser.add_argument("--logits-rtol", type=float, default=None)
    args = parser.parse_args()
    args.seq = SEQ_CPU if args.cpu else SEQ_GPU
    if args.gpus != args.tp * args.pp:
        parser.error(f"--gpus {args.gpus} must equal --tp × --pp = {args.tp * args.pp}")
    if not args.cpu and torch.cuda.device_count() < args.gpus:
        parser.error(
            f"--gpus {args.gpus}: torch sees {torch.cuda.device_count()} GPU(s) here "
            "(--cpu runs the comparison with gloo processes)"
        )
    # fp32 on CPU agrees to rounding; bf16 runs drift apart a little more each step.
    loss_rtol = args.loss_rtol or (1e-4 if args.cpu else 2e-2)
    grad_rtol = args.grad_rtol or (1e-3 if args.cpu else 1e-1)
    logits_rtol = args.logits_rtol or (1e-4 if args.cpu else 2e-3)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_layers = preset(args.preset)
    pattern = "MS" * (model_layers.num_layers // 2) + "M" * (model_layers.num_layers % 2)

    items = args.steps * args.micro * args.accumulation
    if not (out / "hf" / "config.json").exists():
        make_inputs(out, args.preset, items, args.seq + 1)
    mamba = ["--mamba", "layout=attention", "--mamba", "init=attention"]
    student = ["--layer-pattern", pattern, *mamba]
    for name, options in (("teacher", []), ("student", student)):
        if not (out / name).exists():
            _run(sys.executable, "tools/convert_hf_to_native.py", out / "hf", out / name, *options)

    parallel_name = f"tp{args.tp}pp{args.pp}"
    report = {
        "preset": args.preset,
        "layer_pattern": pattern,
        "steps": args.steps,
        "global_batch": args.micro * args.accumulation,
        "sequence": args.seq,
        "tolerances": {"loss": loss_rtol, "grad_norm": grad_rtol, "logits": logits_rtol},
    }
    parallel = train(out, parallel_name, args.gpus, args.tp, args.pp, args)
    report["parallel"] = {
        "first_last_loss": [parallel[0]["loss"], parallel[-1]["loss"]],
        "tokens_per_s_per_device": _median_rate(parallel, 2) / args.gpus,
    }

    export = out / "export"
    _run(
        sys.executable,
        "tools/convert_native_to_hf.py",
        str(out / parallel_name),
        str(export),
        "--dtype",
        "fp32",
        "--overwrite",
    )
    tokens = torch.randint(
        0,
        model_layers.vocab_size,
        (2, min(args.seq, 512)),
        generator=torch.Generator().manual_seed(1),
    )
    native = native_logits(out / parallel_name, tokens)
    exported = hf_logits(export, tokens, "cpu" if args.cpu else "cuda")
    report["export_vs_native_logits"] = _relative(exported, native)
    _write(out, report)

    worst = {}
    if not args.skip_single:
        single = train(out, "tp1pp1", 1, 1, 1, args)
        worst = compare_runs(parallel, single, ("loss", "ce", "layer", "grad_norm"))
        report["max_relative_difference"] = worst
        report["single"] = {
            "first_last_loss": [single[0]["loss"], single[-1]["loss"]],
            "tokens_per_s_per_device": _median_rate(single, 2),
        }
        single_native = native_logits(out / "tp1pp1", tokens)
        report["parallel_vs_single_final_logits"] = _relative(native, single_native)
    failures = [
        f"{name} differs by {value:.2e} (relative) > {loss_rtol:.0e}"
        for name, value in worst.items()
        if name != "grad_norm" and value > loss_rtol
    ]
    if worst.get("grad_norm", 0.0) > grad_rtol:
        failures.append(f"grad_norm differs by {worst['grad_norm']:.2e} > {grad_rtol:.0e}")
    if report["export_vs_native_logits"] > logits_rtol:
        failures.append(f"export logits differ by {report['export_vs_native_logits']:.2e}")
    report["failures"] = failures
    _write(out, report)
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
