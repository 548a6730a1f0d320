"""A DPO training step, ours against TRL's DPOTrainer on the same model, bf16, one GPU.

The model: a Mistral-shaped hybrid of about 1.2B parameters (16 layers, hidden 2048, GQA 16/4,
every other layer a MambaInLlama mamba1 initialised from attention), made from a random
MistralForCausalLM by our import, then exported to transformers for TRL. Both sides take the
same batch (TRL's collated pairs: 4 prompts with chosen and rejected answers, 512 tokens a row),
compute the sigmoid DPO loss against a frozen copy as the reference, run backward and an Adam
step, both clipping the gradient norm at 1.0. Ours: megatron's schedule, DDP and optimizer (as
the trainer runs them), with fp32 master weights and without (`train.fp32_master_weights=false`,
TRL's arithmetic); TRL: `DPOTrainer.training_step`, then what transformers' Trainer runs per
optimizer step (clipping, its fused AdamW, the scheduler, zero_grad). (Before 2026-12-02 TRL's
step left out the clipping and the scheduler.) Then both with the reference's log-probabilities
computed before training (TRL's `precompute_ref_log_probs`, our `dpo.precompute_reference`):
the step runs the policy alone, and the pass that computes them is timed on its own.
`--graphs` adds ours without master weights, both ways, with the forward and backward replayed
from a CUDA graph (train.cuda_graph), and those again with Adam in one Triton launch
(train.adam_kernel=one_launch). Memory: the peak allocated, and the peak the allocator
holds (`_reserved_gib`), which alone counts what a graph's private pool keeps between replays.

`--rounds R` then builds TRL's two steps and our graphed ones together and times them taking
turns for R rounds: TRL's step moves by up to 30% between runs on a shared machine, ours
graphed by under 1%, so a ratio is only as good as the minute each side was timed in.

`--profile ROWS` instead profiles one step of TRL's and of ours (no master weights, the reference
in the step; eager and graphed) with benchmarks/profiling.py: where the GPU time of each goes.

    python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo.json [--graphs [--rounds 5]]
    python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo.json --profile 40
    python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo.json --graphs --rounds 5 \
        --interleaved-only
"""

from __future__ import annotations

import argparse
import gc
import json
import random
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import (
    interleaved_step_seconds,
    median_step_seconds,
    peak_memory,
    round_speedups,
)
from benchmarks.profiling import profile_step

PAIRS, LENGTH, PATTERN = 4, 512, "MA" * 8
SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=4096,
)


def make_models(workdir: Path) -> tuple[Path, Path]:
    """(native checkpoint, transformers export) of the hybrid, made once per workdir."""
    from transformers import MistralConfig, MistralForCausalLM

    from megatron_mamba.convert.exporter import export_hf
    from megatron_mamba.convert.importer import import_hf
    from megatron_mamba.data.toy_tokenizer import train_toy_tokenizer

    hf, native, export = workdir / "mistral", workdir / "native", workdir / "export"
    if not native.is_dir():
        torch.manual_seed(0)
        MistralForCausalLM(MistralConfig(**SHAPE)).save_pretrained(hf)
        words = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "corpus.txt"
        train_toy_tokenizer(words.read_text().splitlines(), hf)
        mamba = {"layout": "attention", "init": "attention"}
        import_hf(hf, native, PATTERN, mamba=mamba, progress=False)
    if not export.is_dir():
        export_hf(native, export, dtype=torch.bfloat16, progress=False)
    return native, export


def _pairs(tokenizer, count: int):
    """Pairs long enough that every row is cut to LENGTH tokens (no padding)."""
    from datasets import Dataset

    words = [w for w in tokenizer.get_vocab() if w.isalpha()]
    rng = random.Random(0)

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    rows = [{"prompt": text(60), "chosen": text(600), "rejected": text(600)} for _ in range(count)]
    return Dataset.from_list(rows)


def trl_step(export: Path, workdir: Path, precompute: bool = False):
    """TRL's DPOTrainer on the export: (step function, its batch). `precompute`: the
    reference's log-probabilities computed when the trainer is made, no reference model kept
    (the policy serves, being the reference at the start)."""
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes)

    tokenizer = AutoTokenizer.from_pretrained(export)

    def load():
        return AutoModelForCausalLM.from_pretrained(export, dtype=torch.bfloat16).cuda()

    trainer = trl.DPOTrainer(
        model=load(),
        ref_model=None if precompute else load().eval(),
        args=trl.DPOConfig(
            output_dir=str(workdir / "trl"),
            precompute_ref_log_probs=precompute,
            beta=0.1,
            per_device_train_batch_size=PAIRS,
            max_length=LENGTH,
            bf16=True,
            report_to=[],
            learning_rate=5e-7,
        ),
        train_dataset=_pairs(tokenizer, PAIRS),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train would set
    model = trainer.model.train()

    def step(optimizer_step: bool = True):
        """What Trainer's loop runs per optimizer step: clipping at max_grad_norm (1.0, as
        ours), the optimizer, the scheduler and zero_grad; without `optimizer_step`, the
        forward and backward alone."""
        trainer.training_step(model, batch)
        if optimizer_step:
            trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
        model.zero_grad()

    return step, batch


def our_step(
    native: Path,
    batch,
    fp32_master_weights: bool = True,
    precompute: bool = False,
    graph: bool = False,
    one_launch: bool = False,
):
    """The trainer's DPO objective on TRL's batch: megatron schedule, DDP, optimizer (with fp32
    master weights, or Adam on the bf16 weights as train.fp32_master_weights=false runs it).
    Returns (step function, seconds of the reference pass over the batch where `precompute`:
    its log-probabilities are then the batch's, and the reference is freed). `graph`: the
    forward and backward replayed from a CUDA graph (training/cuda_graph.py; this and later
    work then runs on a side stream). `one_launch`: Adam as train.adam_kernel=one_launch."""
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_mamba.config import ParallelConfig, RunPrecision
    from megatron_mamba.data.batches import PreferenceBatch, TokenBatch, padded_length
    from megatron_mamba.models.build import build_model
    from megatron_mamba.training.checkpoint import find_checkpoint, load_weights, read_model_config
    from megatron_mamba.training.cuda_graph import GraphedForwardBackward, leave_the_default_stream
    from megatron_mamba.training.ddp import wrap_ddp
    from megatron_mamba.training.dpo import DPOConfig, PreferenceOptimisation
    from megatron_mamba.training.optimizer import megatron_optimizer
    from megatron_mamba.training.reference_logps import reference_logps

    config = read_model_config(native)
    models = []
    for _ in range(2):
        model = build_model(
            config, ParallelConfig(), RunPrecision("bf16"), cpu_initialization=False
        )
        load_weights(find_checkpoint(native, native), model.cuda())
        models.append(model)
    policy, reference = models
    del models  # the names below are the only references (a precomputed reference is freed)
    reference.eval().requires_grad_(False)
    if graph:
        leave_the_default_stream()
    ddp = wrap_ddp(policy, grad_reduce_in_fp32=fp32_master_weights)
    optimizer = megatron_optimizer(
        ddp,
        OptimizerConfig(
            optimizer="adam", lr=5e-7, bf16=fp32_master_weights, params_dtype=torch.bfloat16
        ),
        one_launch_adam=one_launch,
    )
    tokens = batch["input_ids"].cuda()
    mask = batch["completion_mask"][:, 1:].float().cuda()
    pairs = PreferenceBatch(
        *(TokenBatch(t, m) for t, m in zip(tokens.chunk(2), mask.chunk(2), strict=True))
    )
    pass_s = None
    if precompute:
        seq = tokens.shape[1] - 1

        def reference_pass():
            return reference_logps(reference, pairs, range(PAIRS), PAIRS, seq, "cuda")

        pass_s = median_step_seconds(reference_pass)
        pairs = PreferenceBatch(pairs.chosen, pairs.rejected, reference_pass())
        del reference
        reference = None
        torch.cuda.empty_cache()
    objective = PreferenceOptimisation(policy, reference, DPOConfig(beta=0.1))
    schedule = get_forward_backward_func()
    if graph:
        schedule = GraphedForwardBackward(schedule, ddp)

    def step(optimizer_step: bool = True):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        schedule(
            forward_step_func=lambda batches, model: objective.forward_step(next(batches), model),
            data_iterator=iter([pairs]),
            model=ddp,
            num_microbatches=1,
            seq_length=padded_length(tokens.shape[1] - 1, objective.input_multiple),
            micro_batch_size=PAIRS * objective.micro_batch_factor,
        )
        if optimizer_step:
            optimizer.step()

    return step, pass_s


def interleaved(
    native: Path, export: Path, batch, workdir: Path, rounds: int, adams=(False, True)
) -> dict:
    """TRL's two steps and our graphed ones (no master weights; torch's Adam and the one-launch
    one, or those of `adams`: one-launch or not), all built at once and timed taking turns: each
    side's seconds per round, and each of ours against TRL's step of its mode, round by round
    and the median of those ratios."""
    trl_fn, _ = trl_step(export, workdir)
    trl_pre_fn, _ = trl_step(export, workdir, precompute=True)
    steps = {"trl": trl_fn, "trl_precomputed": trl_pre_fn}
    for precompute in (False, True):
        for one_launch in adams:
            name = "ours_precomputed_graphed" if precompute else "ours_no_master_graphed"
            name += "_one_launch" if one_launch else ""
            steps[name], _ = our_step(native, batch, False, precompute, True, one_launch)
    seconds = interleaved_step_seconds(steps, rounds)
    report = {"rounds": rounds, "step_s": seconds}
    for name, times in seconds.items():
        if name.startswith("ours"):
            baseline = seconds["trl_precomputed" if "precomputed" in name else "trl"]
            report[name] = round_speedups(baseline, times)
    return report


def profile(native: Path, export: Path, batch, workdir: Path, rows: int) -> dict:
    """One step of TRL's and of ours (eager and graphed) under torch.profiler
    (benchmarks/profiling.py): each side's CUDA time, in total and by kind of kernel."""
    trl_fn, _ = trl_step(export, workdir)
    sides = {"trl": trl_fn}
    sides["ours_no_master"], _ = our_step(native, batch, False, False, False, True)
    sides["ours_no_master_graphed"], _ = our_step(native, batch, False, False, True, True)
    return {
        name: profile_step(name, step, rows, by_shape=not name.endswith("graphed"))
        for name, step in sides.items()
    }


def _write(out: Path, report: dict) -> None:
    """The report as JSON to `out`, and on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--graphs", action="store_true", help="also ours with CUDA graphs")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="with --graphs: then time TRL's steps and our graphed ones taking turns, this many "
        "rounds (the ratio of each round, and their median)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="ROWS", help="print the top kernels instead"
    )
    parser.add_argument(
        "--interleaved-only",
        action="store_true",
        help="with --rounds: only the rounds, and only ours with the default (one-launch) Adam",
    )
    args = parser.parse_args()
    if args.rounds and not args.graphs:
        parser.error(f"--rounds {args.rounds} needs --graphs")
    if args.interleaved_only and not args.rounds:
        parser.error("--interleaved-only needs --rounds")
    from megatron_mamba.runtime import init_runtime

    init_runtime(seed=1)
    native, export = make_models(args.workdir)
    trl_fn, batch = trl_step(export, args.workdir)
    assert batch["attention_mask"].all(), "rows should be full length (no padding)"
    if args.interleaved_only:
        del trl_fn
        report = interleaved(native, export, batch, args.workdir, args.rounds, adams=(True,))
        _write(args.out, {"interleaved": report})
        return
    if args.profile:
        del trl_fn
        _write(args.out, profile(native, export, batch, args.workdir, args.profile))
        return
    rows, length = batch["input_ids"].shape
    trl_s = median_step_seconds(trl_fn)
    trl_fb = median_step_seconds(partial(trl_fn, optimizer_step=False))
    trl_peak, trl_reserved = peak_memory(trl_fn)
    del trl_fn  # frees TRL's models and optimizer before ours are built
    gc.collect()
    torch.cuda.empty_cache()
    tokens = rows * length  # the policy's tokens per step (chosen and rejected rows)
    result = {
        "pairs": rows // 2,
        "row_tokens": length,
        "trl_step_s": trl_s,
        "trl_tokens_per_s": tokens / trl_s,
        "trl_forward_backward_s": trl_fb,
        "trl_peak_gib": trl_peak,
        "trl_reserved_gib": trl_reserved,
    }
    trl_pre_fn, pre_batch = trl_step(export, args.workdir, precompute=True)
    trl_pre_s = median_step_seconds(trl_pre_fn)
    trl_pre_peak, trl_pre_reserved = peak_memory(trl_pre_fn)
    result.update(
        trl_precomputed_step_s=trl_pre_s,
        trl_precomputed_tokens_per_s=tokens / trl_pre_s,
        trl_precomputed_peak_gib=trl_pre_peak,
        trl_precomputed_reserved_gib=trl_pre_reserved,
    )
    assert pre_batch["input_ids"].shape == batch["input_ids"].shape  # the same 4 pairs
    del trl_pre_fn
    gc.collect()
    torch.cuda.empty_cache()
    # name, fp32 master weights, reference precomputed, CUDA graph, one-launch Adam, baseline
    sides = (
        ("ours", True, False, False, False, trl_s),
        ("ours_no_master", False, False, False, False, trl_s),
        ("ours_precomputed", False, True, False, False, trl_pre_s),  # against TRL's precomputed
    )
    if args.graphs:  # last: from here on the process runs on a side stream
        sides += (
            ("ours_no_master_graphed", False, False, True, False, trl_s),
            ("ours_precomputed_graphed", False, True, True, False, trl_pre_s),
            ("ours_no_master_graphed_one_launch", False, False, True, True, trl_s),
            ("ours_precomputed_graphed_one_launch", False, True, True, True, trl_pre_s),
        )
    for name, master, precompute, graph, one_launch, baseline_s in sides:
        ours_fn, pass_s = our_step(native, batch, master, precompute, graph, one_launch)
        ours_s = median_step_seconds(ours_fn)
        peak, reserved = peak_memory(ours_fn)
        if pass_s is not None:
            result[f"{name}_reference_pass_s"] = pass_s
        result.update(
            {
                f"{name}_step_s": ours_s,
                f"{name}_tokens_per_s": tokens / ours_s,
                f"{name}_speedup": baseline_s / ours_s,
                f"{name}_forward_backward_s": median_step_seconds(
                    partial(ours_fn, optimizer_step=False)
                ),
                f"{name}_peak_gib": peak,
                f"{name}_reserved_gib": reserved,
            }
        )
        del ours_fn
        gc.collect()
        torch.cuda.empty_cache()
    if args.rounds:
        result["interleaved"] = interleaved(native, export, batch, args.workdir, args.rounds)
    _write(args.out, result)


if __name__ == "__main__":
    main()
