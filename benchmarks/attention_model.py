"""Training-step throughput of our attention-only GPTNeoX against transformers' (sdpa), bf16.

Pythia-1b shape (16 layers, hidden 2048, 8 heads), seq 2048, micro-batch 4, forward + backward +
AdamW step for both, in the same process on one GPU; ours again with that AdamW in one Triton
launch (train.adam_kernel=one_launch), and with `--graphed` that one with its forward and backward
replayed from a CUDA graph, as train.cuda_graph=true runs it (its peak memory is what the
allocator reserves, the graph's pool included). Prints a markdown row and writes JSON.

    torchrun --nproc_per_node 1 benchmarks/attention_model.py --out $OUT/attention.json [--rounds 6]
        [--same-weights] [--clocks] [--pending] [--graphed]
"""

from __future__ import annotations

import argparse
import gc
import os
from functools import partial
from unittest import mock

import torch

from benchmarks.common import (
    interleaved_speedups,
    matmul_peak_flops,
    median_step_seconds,
    peak_memory,
    print_speedups,
    save_report,
)
from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.convert.hf_weights import native_from_hf
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.models.size import training_flops_per_token
from megatron_mamba.parallel.shards import load_full_state
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.adamw import use_one_launch_adam


def _ours(config, tokens, one_launch_adam, weights):
    """Our model on the GPU, the same fused AdamW as transformers' side (or, with
    `one_launch_adam`, that AdamW as train.adam_kernel=one_launch runs it, training/adamw.py),
    and a function running one forward and backward. `weights`: a transformers state dict to
    start from (`--same-weights`), converted as the importer does."""
    model = build_model(config, ParallelConfig(), RunPrecision("bf16"), cpu_initialization=False)
    model.cuda()
    if weights is not None:
        load_full_state(model, native_from_hf(weights, config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    if one_launch_adam:
        assert use_one_launch_adam(optimizer)

    def forward_backward():
        model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean().backward()

    return model, optimizer, forward_backward


def ours_step(config, tokens, one_launch_adam=False, weights=None):
    """Our training step, eager (see `_ours`)."""
    model, optimizer, forward_backward = _ours(config, tokens, one_launch_adam, weights)

    def step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def pending_ours_step(config, tokens, weights=None):
    """`ours_step` with one-launch Adam, run with the opt-in kernels (`--pending`; on this model
    fc1 and GeLU as one function, models/linear_gelu.py): the default and the opt-in in one run."""
    model, step = ours_step(config, tokens, one_launch_adam=True, weights=weights)

    def pending_step():  # the model reads the switch at each forward
        with mock.patch.dict(os.environ, {"MEGATRON_MAMBA_PENDING_KERNELS": "1"}):
            step()

    return model, pending_step


def graphed_ours_step(config, tokens, weights=None):
    """`ours_step` with one-launch Adam, its forward and backward replayed from one CUDA graph
    (what train.cuda_graph=true does, without the trainer's DDP and schedule): for steps whose
    host time, launching kernels, exceeds their GPU time. Adam stays outside the graph; the
    gradients are zeroed in place, never freed, so that the graph's writes land in them."""
    model, optimizer, forward_backward = _ours(config, tokens, True, weights)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton autotuning, gradients allocated) and capture
        for _ in range(3):
            forward_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward_backward()
    torch.cuda.current_stream().wait_stream(side)

    def step():
        graph.replay()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    return model, step


def hf_gpt_neox_config(config):
    """transformers' GPTNeoXConfig of our Pythia-shaped `config` (sdpa attention)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.ffn_hidden_size,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
        attn_implementation="sdpa",
        torch_dtype=torch.bfloat16,
    )


def hf_weights(config) -> dict[str, torch.Tensor]:
    """A transformers GPTNeoX's initial weights (bf16, on the GPU), for both sides to start
    from: a GEMM's time can depend on the values it multiplies (the GPU's power draw), and
    each side's own initialisation gives different ones."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(hf_gpt_neox_config(config)).to(device="cuda", dtype=torch.bfloat16)
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def hf_step(config, tokens, weights=None):
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(hf_gpt_neox_config(config)).to(device="cuda", dtype=torch.bfloat16)
    if weights is not None:
        model.load_state_dict(weights)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        # transformers shifts labels itself: labels are the inputs.
        model(tokens[:, :-1], labels=tokens[:, :-1]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def measure(name, build, config, tokens, peak, seq):
    model, step = build(config, tokens)
    seconds = median_step_seconds(step)
    allocated, reserved = peak_memory(step)
    memory = reserved if build.func is graphed_ours_step else allocated
    tokens_per_s = tokens.shape[0] * seq / seconds
    mfu = tokens_per_s * training_flops_per_token(config, seq) / peak
    del model, step
    gc.collect()
    torch.cuda.empty_cache()
    return {"name": name, "tokens_per_s": tokens_per_s, "peak_gib": memory, "mfu": mfu}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="pythia-1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--out")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="then build the sides together and time them taking turns, this many rounds",
    )
    parser.add_argument(
        "--same-weights",
        action="store_true",
        help="both sides start from one transformers model's weights (ours converted)",
    )
    parser.add_argument(
        "--pending",
        action="store_true",
        help="one more side: ours with MEGATRON_MAMBA_PENDING_KERNELS=1 (the opt-in kernels)",
    )
    parser.add_argument("--graphed", action="store_true", help="also ours with CUDA graphs")
    parser.add_argument(
        "--clocks",
        action="store_true",
        help="with --rounds: each side's median SM clock and power (benchmarks/gpu_clocks.py)",
    )
    args = parser.parse_args()
    if args.clocks and not args.rounds:
        parser.error("--clocks samples the interleaved rounds: give --rounds too")
    init_runtime(seed=0)
    config = preset(args.preset)
    tokens = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq + 1), device="cuda")
    peak = matmul_peak_flops()
    weights = hf_weights(config) if args.same_weights else None
    hf = partial(hf_step, weights=weights)
    ours = partial(ours_step, weights=weights)
    ours_one_launch = partial(ours_step, one_launch_adam=True, weights=weights)
    ours_pending = partial(pending_ours_step, weights=weights)
    ours_graphed = partial(graphed_ours_step, weights=weights)
    rows = [
        measure("transformers GPTNeoX (sdpa)", hf, config, tokens, peak, args.seq),
        measure("megatron-mamba GPTNeoX", ours, config, tokens, peak, args.seq),
        measure(
            "megatron-mamba GPTNeoX, one-launch Adam",
            ours_one_launch,
            config,
            tokens,
            peak,
            args.seq,
        ),
    ]
    if args.pending:
        name = "megatron-mamba GPTNeoX, one-launch Adam, pending kernels"
        rows.append(measure(name, ours_pending, config, tokens, peak, args.seq))
    if args.graphed:
        name = "megatron-mamba GPTNeoX, one-launch Adam, CUDA graph"
        rows.append(measure(name, ours_graphed, config, tokens, peak, args.seq))
    base = rows[0]["tokens_per_s"]
    print(f"bf16 matmul ceiling: {peak / 1e12:.0f} TFLOP/s")
    print("| model | tokens/s | × transformers | peak GiB | MFU |\n|---|---|---|---|---|")
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
        print(
            f"| {row['name']} | {row['tokens_per_s']:,.0f} | {row['speedup']:.2f} | "
            f"{row['peak_gib']:.1f} | {row['mfu']:.1%} |"
        )
    report = {"args": vars(args), "peak_flops": peak, "rows": rows}
    if args.rounds:
        builds = {
            "transformers": hf,
            "megatron-mamba": ours,
            "megatron-mamba, one-launch Adam": ours_one_launch,
        }
        if args.pending:
            builds["megatron-mamba, one-launch Adam, pending kernels"] = ours_pending
        if args.graphed:
            builds["megatron-mamba, one-launch Adam, CUDA graph"] = ours_graphed
        steps = {name: build(config, tokens)[1] for name, build in builds.items()}
        report["interleaved"] = interleaved_speedups(steps, args.rounds, clocks=args.clocks)
        print_speedups(report["interleaved"], f"taking turns, {args.rounds} rounds")
    save_report(args.out, report)


if __name__ == "__main__":
    main()
